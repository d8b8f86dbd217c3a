import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdirSync, openSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/server.js';
import { loadNative } from './addon.js';

type Sent = { err: NodeJS.ErrnoException | null; sent: number };

/** A connected TCP pair on loopback: `near` is the server's side (what sendfile writes to). */
async function pair(): Promise<{ near: net.Socket; far: net.Socket; close: () => void }> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  const nearP = new Promise<net.Socket>((r) => srv.once('connection', r));
  const far = net.connect(port, '127.0.0.1');
  const near = await nearP;
  srv.close();
  // the tests cut connections on purpose: a reset is what they check, not an uncaught error
  for (const s of [near, far]) s.on('error', () => {});
  return { near, far, close: () => { near.destroy(); far.destroy(); } };
}
const fdOf = (s: net.Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd;
const collect = (s: net.Socket) => {
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  return new Promise<Buffer>((r) => s.on('close', () => r(Buffer.concat(parts))));
};
const send = (sock: number, file: number, off: number, len: number, idleMs = 30_000) =>
  new Promise<Sent>((r) => loadNative().sendfile(sock, file, off, len, idleMs, (err, sent) => r({ err, sent })));
const openFds = () => readdirSync('/proc/self/fd').length;

describe('native sendfile (a real TCP connection on loopback)', () => {
  const tmp = tempDir('df-sendfile-');
  afterAll(() => tmp.cleanup());
  const data = randomBytes(5 << 20);
  const file = path.join(tmp.dir, 'data');
  writeFileSync(file, data);

  it('sends exactly the range asked for, and the socket stays usable by Node afterwards', async () => {
    const { near, far, close } = await pair();
    const got = collect(far);
    const fd = openSync(file, 'r');
    expect(await send(fdOf(near), fd, 0, 0)).toEqual({ err: null, sent: 0 }); // starts the sender (its epoll and eventfd stay)
    const before = openFds();
    try {
      const r = await send(fdOf(near), fd, 1000, (3 << 20) + 7);
      expect(r).toEqual({ err: null, sent: (3 << 20) + 7 });
      expect(openFds()).toBe(before); // the sender closed its copies
      near.end('tail');
      const body = await got;
      expect(body.subarray(0, -4).equals(data.subarray(1000, 1000 + (3 << 20) + 7))).toBe(true);
      expect(body.subarray(-4).toString()).toBe('tail');
    } finally {
      closeSync(fd);
      close();
    }
  });

  it('a file shorter than the range: ENODATA after what there was', async () => {
    const { near, far, close } = await pair();
    const got = collect(far);
    const fd = openSync(file, 'r');
    try {
      const r = await send(fdOf(near), fd, data.length - 4096, 1 << 20);
      expect(r.err?.code).toBe('ENODATA');
      expect(r.sent).toBe(4096);
      near.end();
      expect((await got).equals(data.subarray(-4096))).toBe(true);
    } finally {
      closeSync(fd);
      close();
    }
  });

  it('a reader that leaves ends the transfer with EPIPE or ECONNRESET', async () => {
    const big = path.join(tmp.dir, 'sparse');
    const bfd = openSync(big, 'w+');
    ftruncateSync(bfd, 1 << 30); // reads as zeros, fast
    const { near, far, close } = await pair();
    try {
      let seen = 0;
      far.on('data', (d: Buffer) => { seen += d.length; if (seen > (1 << 20)) far.destroy(); });
      const r = await send(fdOf(near), bfd, 0, 1 << 30);
      expect(['EPIPE', 'ECONNRESET']).toContain(r.err?.code);
      expect(r.sent).toBeGreaterThan(1 << 20);
      expect(r.sent).toBeLessThan(1 << 30);
    } finally {
      closeSync(bfd);
      close();
    }
  });

  it('a reader that stops reading loses the transfer after idleMs without progress (ETIMEDOUT)', async () => {
    const big = path.join(tmp.dir, 'sparse2');
    const bfd = openSync(big, 'w+');
    ftruncateSync(bfd, 1 << 30);
    const { near, far, close } = await pair();
    try {
      far.pause(); // takes nothing: the socket buffers fill, then no progress
      const r = await send(fdOf(near), bfd, 0, 1 << 30, 300);
      expect(r.err?.code).toBe('ETIMEDOUT');
      expect(r.sent).toBeGreaterThan(0);
      expect(r.sent).toBeLessThan(1 << 30);
    } finally {
      closeSync(bfd);
      close();
    }
  });

  it("works on its own copies: Node closing its socket and file mid-transfer does not cut the body", async () => {
    const { near, far, close } = await pair();
    const got = collect(far);
    const fd = openSync(file, 'r');
    const p = send(fdOf(near), fd, 0, data.length);
    closeSync(fd);
    near.destroy(); // Node's descriptor is gone; the sender's dup keeps the connection until the end
    try {
      expect(await p).toEqual({ err: null, sent: data.length });
      expect((await got).equals(data)).toBe(true);
    } finally {
      close();
    }
  });

  it('bad arguments are a TypeError, and a closed descriptor is EBADF, before anything is sent', () => {
    const n = loadNative();
    expect(() => n.sendfile(-1, 0, 0, 1, 1000, () => {})).toThrow(/sendfile/);
    expect(() => (n.sendfile as unknown as (...a: unknown[]) => void)(1, 2, 0, 1, 1000)).toThrow(/sendfile/);
    let err: NodeJS.ErrnoException | undefined;
    try {
      n.sendfile(999_999, 0, 0, 1, 1000, () => {});
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err).toMatchObject({ code: 'EBADF' });
  });

  const sendParts = (sock: number, parts: Array<Buffer | [string, number]>, idleMs = 30_000) =>
    new Promise<Sent>((r) => loadNative().sendParts(sock, parts, idleMs, (err, sent) => r({ err, sent })));

  it('sendParts: buffers and whole files in order, byte-exact, no descriptor left open', async () => {
    const small = path.join(tmp.dir, 'small');
    writeFileSync(small, data.subarray(7, 7 + 70_000));
    const { near, far, close } = await pair();
    const got = collect(far);
    const before = openFds();
    try {
      const head = Buffer.from('HEAD');
      const r = await sendParts(fdOf(near), [head, [file, data.length], Buffer.alloc(0), Buffer.from('mid'), [small, 70_000], Buffer.from('end')]);
      expect(r).toEqual({ err: null, sent: 4 + data.length + 3 + 70_000 + 3 });
      // the part files stay open in the sender's cache until forgotten
      loadNative().sendForget();
      for (let i = 0; i < 100 && openFds() !== before; i++) await new Promise((res) => setTimeout(res, 10));
      expect(openFds()).toBe(before);
      near.end();
      const body = await got;
      expect(body.equals(Buffer.concat([head, data, Buffer.from('mid'), data.subarray(7, 7 + 70_000), Buffer.from('end')]))).toBe(true);
    } finally {
      close();
    }
  });

  it('sendParts: a file part that is gone (ENOENT) or not the size given (ESTALE) ends the body there', async () => {
    for (const [parts, code] of [
      [[Buffer.from('A'), [path.join(tmp.dir, 'nope'), 10]], 'ENOENT'],
      [[Buffer.from('A'), [file, data.length - 1]], 'ESTALE'],
    ] as Array<[Array<Buffer | [string, number]>, string]>) {
      const { near, far, close } = await pair();
      const got = collect(far);
      try {
        const r = await sendParts(fdOf(near), parts);
        expect(r.err?.code).toBe(code);
        expect(r.sent).toBeLessThanOrEqual(1); // what came before may still be in the sender's pipe: the body is cut anyway
        near.end();
        expect('A'.startsWith((await got).toString())).toBe(true);
      } finally {
        close();
      }
    }
  });

  it('sendRate: a cap makes bodies wait for the token bucket and still sends every byte; 0 lifts it', async () => {
    const n = loadNative();
    const { near, far, close } = await pair();
    const got = collect(far);
    const t0 = n.sendStats();
    n.sendRate(4 << 20); // 4 MiB/s: a 5 MiB body needs the bucket refilled many times
    try {
      const r = await sendParts(fdOf(near), [[file, data.length]]);
      expect(r).toEqual({ err: null, sent: data.length });
      const t1 = n.sendStats();
      expect(t1.rate).toBe(4 << 20);
      expect(t1.throttled).toBeGreaterThan(t0.throttled);
      expect(t1.bytes - t0.bytes).toBe(data.length);
      near.end();
      expect((await got).equals(data)).toBe(true);
    } finally {
      n.sendRate(0);
      close();
    }
    expect(n.sendStats().rate).toBe(0);
  });

  it('sendParts: bad parts are a TypeError before anything is sent', async () => {
    const n = loadNative();
    const { near, close } = await pair();
    try {
      for (const parts of [[], ['x'], [[1, 2]], [['/x', -1]], [{}]]) {
        expect(() => n.sendParts(fdOf(near), parts as never, 1000, () => {})).toThrow(/sendParts/);
      }
      expect(() => n.sendRate(-1)).toThrow(/sendRate/);
    } finally {
      close();
    }
  });

  it('sendPack: a pack from a chunk store folder is byte for byte encodePack of its files; a file replaced behind the sender is read anew', async () => {
    const { encodePack } = await import('../chunk/pack.js');
    const root = path.join(tmp.dir, 'store');
    const recs = [randomBytes(65_546), randomBytes(100), randomBytes(4000)].map((frame, k) => ({ id: randomBytes(32).toString('hex'), rawLength: 1000 + k, frame }));
    for (const r of recs) {
      mkdirSync(path.join(root, r.id.slice(0, 3)), { recursive: true });
      writeFileSync(path.join(root, r.id.slice(0, 3), `${r.id}.zst`), r.frame);
    }
    const metaOf = (rs: typeof recs) => {
      const full = encodePack(rs);
      const heads = rs.map((r) => full.subarray(0, 0)).length; // count only
      const parts = [full.subarray(0, 8)];
      let at = 8;
      for (const r of rs) { parts.push(full.subarray(at, at + 40)); at += 40 + r.frame.length; }
      parts.push(full.subarray(at));
      expect(heads).toBe(rs.length);
      return { full, meta: Buffer.concat(parts) };
    };
    const sendPack = (sock: number, meta: Buffer) => new Promise<Sent>((r) => loadNative().sendPack(sock, meta, root, 30_000, (err, sent) => r({ err, sent })));
    for (const rs of [recs, [recs[2]!, recs[0]!], []]) {
      const { near, far, close } = await pair();
      const got = collect(far);
      try {
        const { full, meta } = metaOf(rs);
        expect(await sendPack(fdOf(near), meta)).toEqual({ err: null, sent: full.length });
        near.end();
        expect((await got).equals(full)).toBe(true);
      } finally {
        close();
      }
    }
    // a file replaced behind the sender's back (renamed over, same size): the descriptor kept open
    // is of a file no longer linked, so the new one is opened and its bytes sent
    const other = randomBytes(100);
    const p1 = path.join(root, recs[1]!.id.slice(0, 3), `${recs[1]!.id}.zst`);
    writeFileSync(`${p1}.new`, other);
    renameSync(`${p1}.new`, p1);
    const once = async () => {
      const { near, far, close } = await pair();
      const got = collect(far);
      try {
        expect((await sendPack(fdOf(near), metaOf([recs[1]!]).meta)).err).toBe(null);
        near.end();
        return (await got).subarray(48, 148);
      } finally {
        close();
      }
    };
    expect((await once()).equals(other)).toBe(true);
    loadNative().sendForget();
    expect((await once()).equals(other)).toBe(true);
    // bad meta: a TypeError before anything is sent
    const { near, close } = await pair();
    try {
      for (const bad of [Buffer.alloc(10), Buffer.alloc(45), Buffer.concat([Buffer.from('XXXX'), Buffer.alloc(40)])]) {
        expect(() => loadNative().sendPack(fdOf(near), bad, root, 1000, () => {})).toThrow(/sendPack/);
      }
    } finally {
      close();
    }
  });
});
