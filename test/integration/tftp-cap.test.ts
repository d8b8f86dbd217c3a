import dgram from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NETBOOT_DEFAULTS } from '../../src/config/server.js';
import { silentLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { startNetboot } from '../../server/services/netboot.js';
import { decode, encode } from '../../src/tftp/packet.js';
import { startTftp, type TftpEvent, type TftpServer } from '../../src/tftp/server.js';
import { prng } from '../helpers/expect.js';
import { CLIENTS, fetchWith, rawPeer, requireTools, sha256File } from '../helpers/tftp.js';

// tftp.maxTransfers (issue 12): past the cap an RRQ waits in line (FIFO) and starts when a slot
// frees; a retransmission of a waiting RRQ is dropped; past the line, ERROR 0 "server busy".
const MiB = 1024 * 1024;
let dir: string;
let root: string;
let want: string;
const servers: TftpServer[] = [];
let n = 0;
const out = () => path.join(dir, `out-${n++}`);

beforeAll(async () => {
  requireTools('tftp', 'atftp', 'curl');
  dir = mkdtempSync(path.join(tmpdir(), 'df-tftp-cap-'));
  root = path.join(dir, 'root');
  mkdirSync(root);
  const rnd = prng(2026);
  writeFileSync(path.join(root, 'file'), Buffer.from(Uint8Array.from({ length: 4 * MiB }, () => Math.floor(rnd() * 256))));
  want = await sha256File(path.join(root, 'file'));
});

afterAll(async () => {
  for (const s of servers) await s.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 300) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('TFTP with a concurrency cap of 2', () => {
  it('6 real clients at once: all byte-exact, never more than 2 transfers running, the rest waited in line', async () => {
    const srv = await startTftp({ host: '127.0.0.1', port: 0, root, log: silentLogger, maxTransfers: 2, maxQueued: 4 });
    servers.push(srv);
    let mostQueued = 0;
    const watch = setInterval(() => (mostQueued = Math.max(mostQueued, srv.stats().queued)), 5);
    try {
      const mix = [CLIENTS.hpa, CLIENTS.atftp, CLIENTS.curl, CLIENTS.atftpBlk, CLIENTS.curlBlk, CLIENTS.hpa];
      const results = await Promise.all(mix.map(async (c) => {
        const local = out();
        const r = await fetchWith(c, srv.port, 'file', local);
        return { name: c.name, ok: r.ok, out: r.out, sum: r.ok ? await sha256File(local) : '' };
      }));
      for (const r of results) expect(r, `${r.name}: ${r.out}`).toMatchObject({ ok: true, sum: want });
    } finally {
      clearInterval(watch);
    }
    expect(srv.stats()).toEqual({ active: 0, queued: 0, refused: 0, peakActive: 2 });
    expect(mostQueued).toBeGreaterThan(0);
  }, 120_000);

  it('a retransmitted RRQ in line is dropped; past the line a client gets ERROR 0 "server busy"; freed slots go in order', async () => {
    const events: TftpEvent[] = [];
    const srv = await startTftp({ host: '127.0.0.1', port: 0, root, log: silentLogger, maxTransfers: 2, maxQueued: 2, onEvent: (e) => events.push(e) });
    servers.push(srv);
    const rrq = encode({ op: 'rrq', filename: 'file', mode: 'octet', options: [] });
    // Two raw peers take both slots and hold them (they never ACK).
    const [a, b, c] = [await rawPeer(), await rawPeer(), await rawPeer()];
    try {
      a.send(rrq, srv.port);
      b.send(rrq, srv.port);
      const [da, db] = [await a.next(), await b.next()];
      expect(decode(da.msg)).toMatchObject({ op: 'data', block: 1 });
      // C asks twice (a retransmission) and takes one place in line; a real client takes the other.
      c.send(rrq, srv.port);
      c.send(rrq, srv.port);
      const local = out();
      const waiting = fetchWith(CLIENTS.hpa, srv.port, 'file', local);
      await until(() => srv.stats().queued === 2, 'two in line');
      // The line is full: tftp-hpa is told so and gives up.
      const busy = await fetchWith(CLIENTS.hpa, srv.port, 'file', out());
      expect(busy.ok).toBe(false);
      expect(busy.out).toMatch(/Error code 0: server busy: 2 transfers running, 2 waiting/);
      expect(srv.stats()).toMatchObject({ active: 2, queued: 2, refused: 1 });
      // A ends its transfer: C, first in line, starts (once, despite its two RRQs).
      a.send(encode({ op: 'error', code: 0, message: 'enough' }), da.port);
      const dc = await c.next();
      expect(decode(dc.msg)).toMatchObject({ op: 'data', block: 1 });
      c.send(encode({ op: 'error', code: 0, message: 'enough' }), dc.port);
      // B ends too: the real client runs to the end, byte-exact.
      b.send(encode({ op: 'error', code: 0, message: 'enough' }), db.port);
      const r = await waiting;
      expect(r, r.out).toMatchObject({ ok: true });
      expect(await sha256File(local)).toBe(want);
      const cPort = c.sock.address().port;
      expect(events.filter((e) => e.kind === 'start' && e.port === cPort)).toHaveLength(1);
      expect(events.filter((e) => e.error === 'server busy')).toHaveLength(1);
      expect(srv.stats()).toEqual({ active: 0, queued: 0, refused: 1, peakActive: 2 });
    } finally {
      for (const p of [a, b, c]) p.close();
    }
  }, 120_000);

  it('a cap below 1 or a negative line is DF_ERR_CONFIG naming the option, before anything listens', async () => {
    await expect(startTftp({ host: '127.0.0.1', port: 0, root, log: silentLogger, maxTransfers: 0 })).rejects.toMatchObject({ code: 'DF_ERR_CONFIG', message: expect.stringContaining('tftp.maxTransfers') });
    await expect(startTftp({ host: '127.0.0.1', port: 0, root, log: silentLogger, maxQueued: -1 })).rejects.toMatchObject({ code: 'DF_ERR_CONFIG', message: expect.stringContaining('tftp.maxQueued') });
  });

  it('the appliance: tftp.maxTransfers and maxQueued from the config; /metrics shows running, waiting and refused', async () => {
    const metrics = new Metrics();
    const port = await freeUdpPort();
    const nb = { ...NETBOOT_DEFAULTS, tftpListen: { host: '127.0.0.1', port }, tftpRoot: root };
    // DHCP is off: the netboot service never touches endpoints or the metadata.
    const svc = await startNetboot(nb, 8080, dir, undefined as never, undefined as never, silentLogger, { tftp: { maxTransfers: 1, maxQueued: 0 }, metrics });
    const a = await rawPeer();
    try {
      a.send(encode({ op: 'rrq', filename: 'file', mode: 'octet', options: [] }), port);
      const d = await a.next(); // A holds the one slot
      const busy = await fetchWith(CLIENTS.hpa, port, 'file', out());
      expect(busy.out).toMatch(/Error code 0: server busy: 1 transfers running, 0 waiting/);
      const text = await metrics.render();
      expect(text).toContain('deskfuse_tftp_transfers{state="running"} 1');
      expect(text).toContain('deskfuse_tftp_transfers{state="waiting"} 0');
      expect(text).toContain('deskfuse_tftp_refused_total 1');
      a.send(encode({ op: 'error', code: 0, message: 'enough' }), d.port);
      // A's ERROR reaches the transfer's own socket, the next RRQ the listening one: wait until
      // the slot is seen free, or the two race.
      for (let i = 0; i < 200 && !(await metrics.render()).includes('deskfuse_tftp_transfers{state="running"} 0'); i++) await new Promise((r) => setTimeout(r, 10));
      expect(await metrics.render()).toContain('deskfuse_tftp_transfers{state="running"} 0');
      const local = out();
      expect(await fetchWith(CLIENTS.hpa, port, 'file', local)).toMatchObject({ ok: true });
      expect(await sha256File(local)).toBe(want);
    } finally {
      a.close();
      await svc.close();
    }
  });
});

function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  return new Promise((resolve) => s.bind(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  }));
}
