import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../log.js';
import { RawNbd } from '../../test/helpers/nbd-client.js';
import { CMD, TX_FLAG } from './packet.js';
import type { NbdExport, NbdExportProvider } from './export.js';
import { startNbd, type NbdServer } from './server.js';

/**
 * NBD worker threads (server.ts NbdThreads): a connection whose export can move is served by a
 * thread after its handshake (over a dup()ed descriptor, with the bytes already read), the main
 * thread's export only opened and closed. The thread runs the built server (dist/, `npm run build`,
 * as the native addon's dup is): a thread cannot load TypeScript.
 */
const DIST = path.resolve(import.meta.dirname, '../../dist/src/nbd/server.js');
const servers: NbdServer[] = [];
const clients: RawNbd[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const SIZE = 1 << 20;
const pattern = (): Buffer => { const b = Buffer.alloc(SIZE); for (let i = 0; i < SIZE; i++) b[i] = (i * 7) % 253; return b; };

function threadScript(): string {
  if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run \`npm run build\` first`);
  const dir = mkdtempSync(path.join(tmpdir(), 'df-nbdthr-'));
  dirs.push(dir);
  const file = path.join(dir, 'thread.mjs');
  writeFileSync(file, `
import { serveInThread } from ${JSON.stringify(DIST)};
serveInThread((kind, data, call) => {
  const buf = Buffer.from(data.bytes);
  return {
    name: 'pat', description: '', size: buf.length, readOnly: true, multiConn: true,
    blockSize: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    read: async (o, l) => buf.subarray(o, o + l),
    readInto: (o, out) => { buf.copy(out, 0, o, o + out.length); },
    write: () => Promise.reject(new Error('read-only')), zero: () => Promise.reject(new Error('read-only')),
    flush: async () => {},
    extents: async (o, l) => { await call({ op: 'extents', o }); return [{ length: l, flags: 0 }]; },
    close: async () => {},
  };
});
`);
  return file;
}

function provider(calls: unknown[], closes: Array<{ clean: boolean }>, mainReads: number[]): NbdExportProvider {
  const bytes = pattern();
  return {
    list: async () => [{ name: 'pat', description: '' }],
    open: async (): Promise<NbdExport> => ({
      name: 'pat', description: '', size: SIZE, readOnly: true, multiConn: true,
      blockSize: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
      read: async (o, l) => { mainReads.push(o); return bytes.subarray(o, o + l); },
      write: () => Promise.reject(new Error('read-only')), zero: () => Promise.reject(new Error('read-only')),
      flush: async () => {}, extents: () => [{ length: SIZE, flags: 0 }],
      close: async (how) => { closes.push(how); },
      handoff: () => ({ kind: 'pattern', data: { bytes }, call: async (req) => { calls.push(req); return null; } }),
    }),
  };
}

describe('nbd server: worker threads', () => {
  it('serves a handed-off connection from a thread, answers its calls, and closes the export once', async () => {
    const calls: unknown[] = [], closes: Array<{ clean: boolean }> = [], mainReads: number[] = [];
    const server = await startNbd({ host: '127.0.0.1', port: 0, provider: provider(calls, closes, mainReads), log: silentLogger, threads: { count: 2, script: threadScript() } });
    servers.push(server);
    const want = pattern();
    const conns = await Promise.all([0, 1, 2].map(() => RawNbd.connect(server.port)));
    clients.push(...conns);
    for (const c of conns) expect((await c.open('pat')).flags & TX_FLAG.CAN_MULTI_CONN).toBe(TX_FLAG.CAN_MULTI_CONN);
    // Pipelined reads on every connection at once, each checked.
    const reads = conns.flatMap((c, k) => Array.from({ length: 16 }, (_, j) => {
      const offset = ((k * 16 + j) * 12_289) % (SIZE - 8192);
      return c.request({ type: CMD.READ, offset, length: 8192 }).then((r) => ({ r, offset }));
    }));
    for (const { r, offset } of await Promise.all(reads)) {
      expect(r.error).toBe(0);
      expect(r.data!.equals(want.subarray(offset, offset + 8192))).toBe(true);
    }
    expect(mainReads).toEqual([]); // none of it on the main thread
    expect((await conns[0]!.request({ type: CMD.BLOCK_STATUS, offset: 8192, length: 4096 })).error).toBe(0);
    expect(calls).toEqual([{ op: 'extents', o: 8192 }]);
    expect(server.connections()).toBe(3);
    await conns[0]!.request({ type: CMD.DISC }).catch(() => undefined);
    expect(await conns[0]!.closedWithin(5000)).toBe(true);
    for (let i = 0; i < 100 && closes.length < 1; i++) await new Promise((r) => setTimeout(r, 20));
    expect(closes).toEqual([{ clean: true, wrote: false }]);
    await server.close();
    servers.length = 0;
    // The other two, still connected at close, were hung up by their threads; each export closed once.
    expect(closes.length).toBe(3);
    expect(closes.slice(1).every((c) => c.clean === false)).toBe(true);
  });

  it('serves on the main thread without a thread script', async () => {
    const calls: unknown[] = [], closes: Array<{ clean: boolean }> = [], mainReads: number[] = [];
    const server = await startNbd({ host: '127.0.0.1', port: 0, provider: provider(calls, closes, mainReads), log: silentLogger, threads: { count: 2, script: '/nonexistent/thread.js' } });
    servers.push(server);
    const c = await RawNbd.connect(server.port);
    clients.push(c);
    await c.open('pat');
    const r = await c.request({ type: CMD.READ, offset: 4096, length: 100 });
    expect(r.data!.equals(pattern().subarray(4096, 4196))).toBe(true);
    expect(mainReads).toEqual([4096]);
  });
});
