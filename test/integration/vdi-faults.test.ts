import path from 'node:path';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CMD, CMD_FLAG, ERRNO, REP, encodeRequest } from '../../src/nbd/packet.js';
import { baseDisk } from '../helpers/disk.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { cli, freePort, startProcess, stopProcess, tempDir } from '../helpers/server.js';
import { fails, requireNbdClients, run } from '../helpers/vdi.js';

/**
 * Faults of a VDI session, with the server as its own process (so it can be killed -9): a crash after
 * FLUSH loses nothing flushed; a client that vanishes mid-write leaves the session open and
 * uncommitted, with everything it flushed; bad requests get NBD errors on a connection that stays up.
 */
const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let data: string;
let nbdPort: number;
let srv: Awaited<ReturnType<typeof startProcess>>;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const vdi = async (args: string[]) => (await cli(['vdi', ...args, '--json'], admin)).json;

async function server(): Promise<void> {
  srv = await startProcess(data, srv?.port, nbdPort);
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
}

/** A session's export opened by the raw client (name = session/ID:SECRET). */
async function openSession(exportName: string): Promise<RawNbd> {
  const c = await RawNbd.connect(nbdPort);
  await c.open(exportName);
  return c;
}

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-vdi-faults-');
  data = f('data');
  nbdPort = await freePort();
  await server();
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  for (const d of ['crash', 'vanish', 'bad', 'back']) expect((await cli(['desktop', 'create', d, '--image', 'win'], admin)).code).toBe(0);
});
afterAll(async () => {
  if (srv) await stopProcess(srv.proc);
  tmp?.cleanup();
});

describe('VDI faults', () => {
  it('a server killed -9 after a FLUSH keeps every flushed write; the session survives the restart and commits them', async () => {
    const s = await vdi(['session', 'create', 'crash', '--no-auto-commit']);
    const c = await openSession(s.export);
    const a = Buffer.alloc(300_000, 0xa1);
    const b = Buffer.alloc(70_000, 0xb2);
    expect((await c.request({ type: CMD.WRITE, offset: 5 * MiB + 17 }, a)).error).toBe(0);
    expect((await c.request({ type: CMD.WRITE, offset: 100, flags: CMD_FLAG.FUA }, b)).error).toBe(0); // FUA: durable on its own
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(0);
    // Written after the flush and never flushed: may be lost.
    expect((await c.request({ type: CMD.WRITE, offset: 9 * MiB }, Buffer.alloc(4096, 0xcc))).error).toBe(0);
    await stopProcess(srv.proc, 'SIGKILL');
    c.destroy();
    await server();
    const shown = await vdi(['session', 'show', s.session]);
    expect(shown.state).toBe('open');
    const r = await openSession(s.export);
    const got = await r.request({ type: CMD.READ, offset: 5 * MiB + 17, length: a.length });
    expect(got.data!.equals(a)).toBe(true);
    expect((await r.request({ type: CMD.READ, offset: 100, length: b.length })).data!.equals(b)).toBe(true);
    r.disconnect();
    await r.closed;
    const done = await vdi(['session', 'commit', s.session]);
    expect(done.outcome).toMatchObject({ kind: 'fast-forward', ref: 'desktops/crash', by: 'admin' });
    await run('nbdcopy', [`nbd://127.0.0.1:${nbdPort}/win@desktops/crash:${srv.token}`, f('crash.raw')]);
    const img = readFileSync(f('crash.raw'));
    expect(img.subarray(5 * MiB + 17, 5 * MiB + 17 + a.length).equals(a)).toBe(true);
    expect(img.subarray(100, 100 + b.length).equals(b)).toBe(true);
  });

  it('a client that vanishes mid-write: nothing is committed silently; what it flushed survives; an admin commits it', async () => {
    const s = await vdi(['session', 'create', 'vanish']);
    const c = await openSession(s.export);
    const a = Buffer.alloc(65536 * 3, 0x5e);
    expect((await c.request({ type: CMD.WRITE, offset: 2 * MiB }, a)).error).toBe(0);
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(0);
    // Half a WRITE, then gone.
    c.write(encodeRequest({ type: CMD.WRITE, flags: 0, cookie: 999n, offset: 0, length: 1 * MiB }));
    c.write(Buffer.alloc(512 * 1024, 0xee));
    c.destroy();
    let shown;
    for (let i = 0; i < 100; i++) {
      shown = await vdi(['session', 'show', s.session]);
      if (shown.lastDisconnect) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(shown).toMatchObject({ state: 'open', lastDisconnect: 'dropped', connections: 0 });
    const desk = (await cli(['desktop', 'show', 'vanish', '--json'], admin)).json;
    expect(desk.head).toBe(1); // not committed
    expect(desk.lease.holder).toBe(`vdi:${s.session}`); // still the session's, for the VM to come back
    const list = await vdi(['session', 'list', '--desktop', 'vanish']);
    expect(list.sessions.map((x: { id: string }) => x.id)).toEqual([s.session]);
    const done = await vdi(['session', 'commit', s.session]);
    expect(done.outcome.kind).toBe('fast-forward');
    await run('nbdcopy', [`nbd://127.0.0.1:${nbdPort}/win@desktops/vanish:${srv.token}`, f('vanish.raw')]);
    const img = readFileSync(f('vanish.raw'));
    expect(img.subarray(2 * MiB, 2 * MiB + a.length).equals(a)).toBe(true);
    expect(img.subarray(0, 512 * 1024).equals(Buffer.alloc(512 * 1024, 0xee))).toBe(false); // the torn write never landed
  });

  it('a VM that lost its connection and came back commits at its clean shutdown, though it wrote before the drop', async () => {
    const s = await vdi(['session', 'create', 'back']);
    const c = await openSession(s.export);
    expect((await c.request({ type: CMD.WRITE, offset: 4 * MiB }, Buffer.alloc(8192, 0x7b))).error).toBe(0);
    c.destroy(); // dropped: nothing committed
    for (let i = 0; i < 100 && !(await vdi(['session', 'show', s.session])).lastDisconnect; i++) await new Promise((r) => setTimeout(r, 50));
    expect((await vdi(['session', 'show', s.session])).state).toBe('open');
    // Back, reads, shuts down cleanly (qemu-io: FLUSH then NBD_CMD_DISC).
    await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x7b 4194304 8192', `nbd://127.0.0.1:${nbdPort}/${s.export}`]);
    let shown;
    for (let i = 0; i < 100; i++) {
      shown = await vdi(['session', 'show', s.session]);
      if (shown.state !== 'open') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(shown.outcome).toMatchObject({ kind: 'fast-forward', by: 'disconnect', ref: 'desktops/back' });
  });

  it('bad requests on a session get NBD errors and the connection stays usable; oversized lengths close only that socket', async () => {
    const s = await vdi(['session', 'create', 'bad', '--no-auto-commit']);
    const c = await openSession(s.export);
    const size = 32 * MiB;
    expect((await c.request({ type: CMD.READ, offset: size - 10, length: 20 })).error).toBe(ERRNO.EINVAL);
    // proto.md "Error values": ENOSPC for a write beyond the end, EINVAL for a read or trim.
    expect((await c.request({ type: CMD.WRITE, offset: size - 10 }, Buffer.alloc(20))).error).toBe(ERRNO.ENOSPC);
    expect((await c.request({ type: CMD.WRITE_ZEROES, offset: size, length: 4096 })).error).not.toBe(0);
    expect((await c.request({ type: CMD.READ, offset: 0, length: 4096 })).error).toBe(0);
    // A WRITE claiming 1 GiB of payload: the server closes this connection and serves the next.
    const big = await openSession(s.export);
    big.write(encodeRequest({ type: CMD.WRITE, flags: 0, cookie: 1n, offset: 0, length: 1 << 30 }));
    expect(await big.closedWithin(5000)).toBe(true);
    expect((await c.request({ type: CMD.READ, offset: 4096, length: 4096 })).error).toBe(0);
    c.disconnect();
    await c.closed;
    expect((await vdi(['session', 'show', s.session])).increment.changed).toBe(0);
    // Option replies on the wire: unknown exports, missing or wrong secrets.
    const o = await RawNbd.connect(nbdPort);
    await o.greet();
    const go = async (name: string) => (await o.option({ kind: 'go', name, requests: [] })).at(-1)!.type;
    expect(await go(`nope@main:${srv.token}`)).toBe(REP.ERR_UNKNOWN);
    expect(await go('session/0123456789:dfv_x')).toBe(REP.ERR_UNKNOWN);
    expect(await go('win@main')).toBe(REP.ERR_POLICY);
    expect(await go('win@main:dfa_not-a-token')).toBe(REP.ERR_POLICY);
    expect(await go(s.export.split(':')[0])).toBe(REP.ERR_POLICY);
    expect(await go('../../etc/passwd')).toBe(REP.ERR_UNKNOWN);
    o.destroy();
    // Garbage instead of a handshake, then a real client.
    const g = await RawNbd.connect(nbdPort);
    g.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(10)));
    expect(await g.closedWithin(5000)).toBe(true);
    expect(JSON.parse(await run('qemu-img', ['info', '--output=json', `nbd://127.0.0.1:${nbdPort}/win@main:${srv.token}`]))['virtual-size']).toBe(size);
    expect((await fails('qemu-img', ['info', `nbd://127.0.0.1:${nbdPort}/session/0123456789:x`])).status).not.toBe(0);
    expect((await vdi(['session', 'discard', s.session])).state).toBe('discarded');
  });
});
