import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CMD } from '../../src/nbd/packet.js';
import { baseDisk, sha256 } from '../helpers/disk.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { cli, freePort, startProcess, stopProcess, tempDir } from '../helpers/server.js';
import { fails, requireNbdClients, run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * Several servers, one database: a VDI session lives on the server that made it (A). A is killed -9
 * with a client connected; server B (the same data directory, so the same SQLite file and chunk store,
 * standing in for the shared PostgreSQL and S3; its own VDI folder) names A as the session's home,
 * refuses its export, refuses to commit while A's heartbeat is fresh, and with --force commits A's
 * last checkpoint: the base plus exactly the writes A checkpointed after their FLUSH, not the write
 * after. A session A made and never served is discarded from B. A, back, drops its stale increments.
 */
const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let data: string;
let nbdA: number;
let a: Awaited<ReturnType<typeof startProcess>> | undefined;
let b: VdiAppliance | undefined;
const f = (n: string) => path.join(tmp.dir, n);
const admin = () => ({ DESKFUSE_SERVER: a!.url, DESKFUSE_TOKEN: a!.token });
const adminB = () => ({ DESKFUSE_SERVER: b!.url, DESKFUSE_TOKEN: b!.token });
const vdi = (args: string[], env: Record<string, string>) => cli(['vdi', ...args, '--json'], env);

async function startA(): Promise<void> {
  a = await startProcess(data, a?.port, nbdA, { env: { DESKFUSE_SERVER_NAME: 'a' }, args: ['--config', f('a.json')] });
}

interface Shown { state: string; server: string; heartbeatAt: string | null; lastDisconnectAt: string | null; checkpointAt: string | null; checkpointLayer: string | null }

/** Polls `show` through A until `done` holds. */
async function until(id: string, done: (s: Shown) => boolean): Promise<Shown> {
  for (let i = 0; i < 400; i++) {
    const s = (await vdi(['session', 'show', id], admin())).json;
    if (done(s)) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`session ${id} never reached the awaited state`);
}

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-vdi-servers-');
  data = f('data');
  nbdA = await freePort();
  // A checkpoints at most once an hour after FLUSHes (the first at once), so a FLUSH right after a
  // checkpoint is not checkpointed before A dies; the last client leaving checkpoints at once all the same.
  writeFileSync(f('a.json'), JSON.stringify({ nbd: { checkpointSeconds: 3600 } }));
  // B judges A's heartbeat stale after 3 × 600 s: A's is fresh throughout the test, whatever the machine's speed.
  writeFileSync(f('b.json'), JSON.stringify({ nbd: { heartbeatSeconds: 600 } }));
  await startA();
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin())).code).toBe(0);
  for (const d of ['dead', 'gone']) expect((await cli(['desktop', 'create', d, '--image', 'win'], admin())).code).toBe(0);
});
afterAll(async () => {
  await b?.close();
  if (a) await stopProcess(a.proc);
  tmp?.cleanup();
});

describe('a VDI session when its server dies', () => {
  it('B names A, refuses its export and a commit while A looked alive; forced, B commits the checkpoint: the base plus exactly the flushed, checkpointed writes; discard works from B; A, back, drops its copies', async () => {
    const s = (await vdi(['session', 'create', 'dead', '--no-auto-commit'], admin())).json;
    const idle = (await vdi(['session', 'create', 'gone'], admin())).json;
    expect(s.url).toBe(`nbd://127.0.0.1:${nbdA}/${s.export}`);
    const id: string = s.session;
    const secret = s.export.slice(s.export.lastIndexOf(':') + 1);

    // 1. A real client writes and flushes, then disconnects: A's final checkpoint holds those writes.
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 4097 100000', '-c', 'write -z 2097152 65536', '-c', 'flush', s.url]);
    const c1 = await until(id, (v) => v.checkpointAt !== null && v.lastDisconnectAt !== null && v.checkpointAt >= v.lastDisconnectAt);
    expect(c1).toMatchObject({ state: 'open', server: 'a', heartbeatAt: null });

    // 2. Connected again: a write and a FLUSH, checkpointed while the client stays (debounced, after the flush).
    const c = await RawNbd.connect(nbdA);
    await c.open(s.export);
    const w2 = Buffer.alloc(300_000, 0x7e);
    expect((await c.request({ type: CMD.WRITE, offset: 6 * MiB + 11 }, w2)).error).toBe(0);
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(0);
    const c2 = await until(id, (v) => v.checkpointAt !== null && v.checkpointAt > c1.checkpointAt! && v.checkpointLayer !== c1.checkpointLayer);
    expect(c2.heartbeatAt).not.toBeNull(); // a client is connected: A's heartbeat is fresh
    // 3. Written and flushed after that checkpoint (the next one may come an hour later), then A dies
    // with the client connected: this write is lost.
    expect((await c.request({ type: CMD.WRITE, offset: 9 * MiB }, Buffer.alloc(70_000, 0xee))).error).toBe(0);
    expect((await c.request({ type: CMD.FLUSH })).error).toBe(0);
    await stopProcess(a!.proc, 'SIGKILL');
    c.destroy();

    // 4. B: same database and store, its own VDI folder, name b.
    b = await startVdiAppliance(data, { serverName: 'b', vdiDir: f('vdi-b'), nbdCacheDir: f('nbd-cache-b'), configFile: f('b.json') });
    const shown = (await vdi(['session', 'show', id], adminB())).json;
    expect(shown).toMatchObject({ server: 'a', state: 'open', url: `nbd://127.0.0.1:${nbdA}/session/${id}` });
    const listed = (await vdi(['session', 'list'], adminB())).json.sessions.find((x: { id: string }) => x.id === id);
    expect(listed.url).toBe(`nbd://127.0.0.1:${nbdA}/session/${id}`);

    // Its export on B is refused, naming A.
    const refused = await fails('qemu-img', ['info', b.nbdUrl(`session/${id}:${secret}`)]);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain(`VDI session ${id} lives on server a (nbd://127.0.0.1:${nbdA}/session/${id})`);

    // A's heartbeat is fresh (it died with a client connected): B will not commit unless told A is dead.
    const busy = await vdi(['session', 'commit', id], adminB());
    expect(busy.code).toBe(1);
    expect(busy.json.error).toMatchObject({ code: 'DF_ERR_VDI_SESSION_BUSY', server: 'a' });
    expect((await vdi(['session', 'show', id], adminB())).json).toMatchObject({ state: 'open', server: 'a' });

    const done = await vdi(['session', 'commit', id, '--force'], adminB());
    expect(done.code, done.stderr).toBe(0);
    expect(done.json).toMatchObject({ state: 'committed', server: 'b', outcome: { kind: 'fast-forward', version: 2, ref: 'desktops/dead', by: 'admin' } });
    expect(done.json.outcome.chunksChanged).toBeGreaterThan(0);

    // The version: the base plus exactly the checkpointed writes (read back through B's NBD export).
    const model = readFileSync(f('base.img'));
    model.fill(0x3c, 4097, 4097 + 100000);
    model.fill(0, 2097152, 2097152 + 65536);
    w2.copy(model, 6 * MiB + 11);
    writeFileSync(f('model.raw'), model);
    await run('nbdcopy', [b.nbdUrl(`win@desktops/dead:${b.token}`), f('v2.raw')]);
    expect(sha256(f('v2.raw'))).toBe(sha256(f('model.raw')));
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', f('model.raw'), b.nbdUrl(`win@2:${b.token}`)]);
    expect((await cli(['desktop', 'show', 'dead', '--json'], adminB())).json).toMatchObject({ head: 2, lease: null });

    // A session A made and never served: B discards it without force, and the lease is free.
    const dropped = await vdi(['session', 'discard', idle.session], adminB());
    expect(dropped.code, dropped.stderr).toBe(0);
    expect(dropped.json).toMatchObject({ state: 'discarded', server: 'b' });
    expect((await cli(['desktop', 'show', 'gone', '--json'], adminB())).json.lease).toBeNull();
    await b.close();
    b = undefined;

    // 5. A comes back: its copies of both sessions are dropped, and the committed session's export refused.
    expect(existsSync(path.join(data, 'vdi', id))).toBe(true);
    await startA();
    expect(existsSync(path.join(data, 'vdi', id))).toBe(false);
    expect(existsSync(path.join(data, 'vdi', idle.session))).toBe(false);
    const stale = await fails('qemu-img', ['info', s.url]);
    expect(stale.status).not.toBe(0);
    expect(stale.stderr).toContain(`VDI session ${id} is committed as version 2`);
  });
});
