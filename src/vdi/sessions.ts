import { randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { hashToken, newToken } from '../auth/tokens.js';
import type { RawChunkCache } from '../chunk/raw-cache.js';
import type { ChunkStore } from '../chunk/store.js';
import { desktopRef, type Desktops } from '../desktop/desktops.js';
import { dfError, isDeskfuseError } from '../errors.js';
import type { Catalog } from '../image/catalog.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import { encodeLayer } from '../image/layer.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { Meta } from '../meta/repo.js';
import { incrementLayer } from './commit.js';
import { CloudIncrement, type IncrementStats } from './increment.js';
import type { VdiOutcome, VdiRepo, VdiSessionRow, VdiState } from './model.js';

/**
 * VDI sessions: create (take the desktop's lease, fix the base version, make the cloud increment),
 * serve (the NBD export opens the increment through `attach`), commit (increment → layer → a
 * `vdi-commit` version with parent = base, fast-forward or kept as a conflict) and discard.
 *
 * The lease is held while the session is open and renewed while a client is connected; an abandoned
 * session's lease runs out after its TTL, so a VOI endpoint can take the desktop back. Committing it
 * later re-takes a free lease; if another holder has it, the version is kept as a conflict.
 */
export interface VdiSessionsDeps {
  repo: VdiRepo;
  meta: Pick<Meta, 'desktops' | 'tokens'>;
  catalog: Catalog;
  desktops: Desktops;
  chunks: ChunkStore;
  cache: RawChunkCache;
  /** Where increments live: <dir>/<session id>/. */
  dir: string;
  log?: Logger;
  now?: () => Date;
  /** Lease TTL of a session, seconds (renewed at a third of it while a client is connected). */
  leaseSeconds?: number;
}

export interface VdiSessionView extends Omit<VdiSessionRow, 'secretHash'> {
  /** `session/ID` (the secret follows as `:SECRET` in the name a client sends). */
  export: string;
  connections: number;
  /**
   * The cloud increment (open sessions, in `show`): chunks that differ from the base; while a client
   * is connected also what it wrote and flushed since the increment was opened.
   */
  increment?: { changed: number; live: Omit<IncrementStats, 'changed'> | null };
}

export interface CreatedSession {
  session: VdiSessionView;
  secret: string;
  /** The export name to connect to, secret included. */
  exportName: string;
}

/** A session's increment while clients use it. */
interface Live {
  inc: CloudIncrement;
  connections: number;
}

const ID_RE = /^[0-9a-f]{10}$/;
export const sessionExport = (id: string) => `session/${id}`;

export class VdiSessions {
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly leaseSeconds: number;
  private readonly live = new Map<string, Live>();
  private readonly opening = new Map<string, Promise<Live>>();
  /** Increments being flushed and closed after their last client: a new client waits for it. */
  private readonly closing = new Map<string, Promise<void>>();
  /**
   * Sessions some connection wrote to (since this server started): a VM that lost its connection and
   * came back still commits at its clean shutdown, even if the last connection wrote nothing.
   */
  private readonly wrote = new Set<string>();
  /** One commit or discard at a time per session. */
  private readonly ending = new Map<string, Promise<VdiSessionView>>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly deps: VdiSessionsDeps) {
    this.log = deps.log ?? silentLogger;
    this.now = deps.now ?? (() => new Date());
    this.leaseSeconds = deps.leaseSeconds ?? 3600;
    this.timer = setInterval(() => void this.renewLeases(), (this.leaseSeconds * 1000) / 3);
    this.timer.unref();
  }

  async create(req: { desktop: string; force?: boolean; autoCommit?: boolean }, author: string): Promise<CreatedSession> {
    const d = await this.deps.desktops.get(req.desktop);
    const id = randomBytes(5).toString('hex');
    const holder = `vdi:${id}`;
    let fencing: number | null = null;
    if (d.mode === 'persistent') fencing = (await this.deps.desktops.acquireLease(d.name, holder, this.leaseSeconds, req.force ?? false)).fencing;
    try {
      // The base is read after the lease is ours: what the previous holder committed is in it.
      const base = await this.deps.catalog.resolve(d.image, d.mode === 'persistent' ? desktopRef(d.name) : d.follows);
      const img = await this.deps.catalog.image(d.image);
      await CloudIncrement.create(this.incDir(id), { virtualSize: img.virtualSize, chunkSize: img.chunkSize });
      const secret = newToken('dfv');
      const at = this.now().toISOString();
      await this.deps.repo.insert({
        id, desktop: d.name, image: d.image, base: base.version, mode: d.mode, holder, fencing, secretHash: hashToken(secret),
        autoCommit: req.autoCommit ?? true, state: 'open', createdAt: at, createdBy: author, updatedAt: at,
        lastConnectAt: null, lastDisconnectAt: null, lastDisconnect: null, outcome: null, failure: null,
      });
      this.log.info({ session: id, desktop: d.name, image: d.image, base: base.version, fencing, author }, 'vdi session created');
      return { session: await this.view(id), secret, exportName: `${sessionExport(id)}:${secret}` };
    } catch (err) {
      // Undo, without letting a failed undo hide why the session could not be made.
      if (fencing !== null) try { await this.deps.desktops.releaseLease(d.name, fencing); } catch { /* reported below */ }
      await fsp.rm(this.incDir(id), { recursive: true, force: true }).catch(() => {});
      throw err;
    }
  }

  async get(id: string): Promise<VdiSessionRow> {
    const row = ID_RE.test(id) ? await this.deps.repo.get(id) : undefined;
    if (!row) throw dfError('DF_ERR_VDI_SESSION_NOT_FOUND', `no VDI session ${JSON.stringify(id)}`, { session: id });
    return row;
  }

  async view(id: string, withStats = false): Promise<VdiSessionView> {
    const { secretHash: _s, ...row } = await this.get(id);
    const live = this.live.get(id);
    const stats = live?.inc.stats;
    return {
      ...row, export: sessionExport(id), connections: live?.connections ?? 0,
      ...(withStats && stats ? { increment: { changed: stats.changed, live: { bytesWritten: stats.bytesWritten, flushes: stats.flushes, lastFlushAt: stats.lastFlushAt } } } : {}),
    };
  }

  /** With stats: opens the increment of an idle open session briefly. */
  async show(id: string): Promise<VdiSessionView> {
    const row = await this.get(id);
    if (row.state !== 'open' || this.live.has(id)) return await this.view(id, true);
    const inc = await this.openIncrement(row);
    try {
      return { ...(await this.view(id)), increment: { changed: inc.stats.changed, live: null } };
    } finally {
      await inc.close();
    }
  }

  async list(opts: { desktop?: string; states?: VdiState[] } = {}): Promise<VdiSessionView[]> {
    return Promise.all((await this.deps.repo.list(opts)).map((r) => this.view(r.id)));
  }

  /** Is `secret` the session's secret (or an unexpired admin token)? */
  async authorize(id: string, secret: string | undefined): Promise<VdiSessionRow> {
    const row = await this.get(id);
    if (!secret) throw dfError('DF_ERR_UNAUTHORIZED', `export ${sessionExport(id)} needs its secret: session/ID:SECRET`, { session: id });
    const a = Buffer.from(hashToken(secret), 'hex');
    if (timingSafeEqual(a, Buffer.from(row.secretHash, 'hex'))) return row;
    const t = await this.deps.meta.tokens.findToken(hashToken(secret));
    if (t?.scope === 'admin' && (t.expiresAt === null || t.expiresAt > this.now().toISOString())) return row;
    throw dfError('DF_ERR_UNAUTHORIZED', `wrong secret for ${sessionExport(id)}`, { session: id });
  }

  /** A client connects: the increment, opened once and shared by the session's connections. */
  async attach(id: string, remote: string): Promise<CloudIncrement> {
    await this.closing.get(id);
    const row = await this.get(id);
    if (row.state !== 'open') throw stateError(row, 'serve');
    let live = this.live.get(id);
    if (!live) {
      let p = this.opening.get(id);
      if (!p) {
        p = (async () => ({ inc: await this.openIncrement(row, undefined, (reason) => void this.fail(id, reason)), connections: 0 }))();
        this.opening.set(id, p);
        p.finally(() => this.opening.delete(id)).catch(() => {});
      }
      live = await p;
      this.live.set(id, live);
    }
    live.connections++;
    await this.deps.repo.update(id, { lastConnectAt: this.now().toISOString(), updatedAt: this.now().toISOString() });
    await this.renew(row);
    this.log.info({ session: id, desktop: row.desktop, remote, connections: live.connections }, 'vdi session connected');
    return live.inc;
  }

  /**
   * A client's connection ended. After a clean disconnect (NBD_CMD_DISC) of a connection that wrote,
   * with no other client left, an auto-commit session is committed (a restore desktop's is discarded).
   * A dropped connection never commits: the session is kept for the VM to reconnect or an admin.
   */
  async detach(id: string, how: { clean: boolean; wrote: boolean }): Promise<void> {
    const live = this.live.get(id);
    if (!live) return;
    live.connections--;
    if (how.wrote) this.wrote.add(id);
    const at = this.now().toISOString();
    const row = await this.deps.repo.update(id, { lastDisconnectAt: at, lastDisconnect: how.clean ? 'clean' : 'dropped', updatedAt: at });
    const fields = { session: id, desktop: row.desktop, clean: how.clean, wrote: how.wrote, connections: live.connections };
    if (!how.clean) this.log.warn(fields, 'vdi client dropped without disconnecting: session kept open, not committed');
    else this.log.info(fields, 'vdi client disconnected');
    if (live.connections > 0) return;
    const commitNow = how.clean && this.wrote.has(id) && row.autoCommit && row.state === 'open' && !live.inc.failure;
    this.live.delete(id);
    const closing = (async () => {
      try {
        if (!live.inc.failure) await live.inc.flush(); // a failed increment has nothing it could make durable
      } finally {
        await live.inc.close();
      }
    })();
    this.closing.set(id, closing.catch(() => {}));
    try {
      await closing;
    } finally {
      this.closing.delete(id);
    }
    if (!commitNow) return;
    try {
      if (row.mode === 'restore') await this.discard(id, 'disconnect');
      else await this.commit(id, 'disconnect', row.createdBy);
    } catch (err) {
      this.log.error({ session: id, desktop: row.desktop, err }, 'vdi auto-commit failed: the session is kept open');
    }
  }

  async commit(id: string, by: 'disconnect' | 'admin', author: string): Promise<VdiSessionView> {
    return this.once(id, () => this.doCommit(id, by, author));
  }

  async discard(id: string, by: 'disconnect' | 'admin' = 'admin'): Promise<VdiSessionView> {
    return this.once(id, async () => {
      const row = await this.get(id);
      if (row.state === 'discarded') return await this.view(id);
      // A commit that failed half-way ('committing') may be retried or given up; a failed session only given up.
      if (row.state !== 'open' && row.state !== 'committing' && row.state !== 'failed') throw stateError(row, 'discard');
      this.notConnected(row);
      const outcome: VdiOutcome = { kind: 'discarded', version: null, ref: null, chunksChanged: 0, by, seconds: 0 };
      await this.deps.repo.update(id, { state: 'discarded', outcome, updatedAt: this.now().toISOString() });
      await this.releaseLease(row);
      await fsp.rm(this.incDir(id), { recursive: true, force: true });
      this.log.info({ session: id, desktop: row.desktop, by }, 'vdi session discarded');
      return await this.view(id);
    });
  }

  close(): void {
    clearInterval(this.timer);
  }

  /** A flush of the session's increment failed: the session is `failed` (writes refused, no commit) until discarded. */
  private async fail(id: string, reason: string): Promise<void> {
    try {
      const row = await this.deps.repo.update(id, { state: 'failed', failure: reason, updatedAt: this.now().toISOString() });
      this.log.error({ session: id, desktop: row.desktop, reason }, 'vdi session failed: a flush did not make its writes durable; discard it');
    } catch (err) {
      // The increment refuses writes all the same, and a disconnect does not commit it (detach checks it).
      this.log.error({ session: id, reason, err }, 'vdi session failed, and recording it failed too');
    }
  }

  private async doCommit(id: string, by: 'disconnect' | 'admin', author: string): Promise<VdiSessionView> {
    const t0 = performance.now();
    let row = await this.get(id);
    if (row.state === 'committed') return await this.view(id);
    if (row.state !== 'open' && row.state !== 'committing') throw stateError(row, 'commit');
    if (row.mode === 'restore') {
      throw dfError('DF_ERR_RESTORE_MODE', `desktop ${row.desktop} is in restore mode: its VDI sessions are discarded, never committed`, { desktop: row.desktop, session: id });
    }
    this.notConnected(row);
    row = await this.deps.repo.update(id, { state: 'committing', updatedAt: this.now().toISOString() });
    const base = await this.deps.catalog.index(row.image, row.base);
    const inc = await this.openIncrement(row, base);
    let made;
    try {
      made = await incrementLayer(inc, base, this.deps.chunks);
    } finally {
      await inc.close();
    }
    let outcome: VdiOutcome;
    if (made.layer.entries.length === 0) {
      outcome = { kind: 'unchanged', version: null, ref: desktopRef(row.desktop), chunksChanged: 0, by, seconds: 0 };
    } else {
      const bytes = encodeLayer(made.layer);
      const staged = await this.deps.catalog.stageLayer(row.image, bytes);
      const fencing = await this.fencingForCommit(row);
      const out = await this.deps.desktops.commit(row.desktop, {
        parent: row.base, layer: staged.layer, kind: 'vdi-commit', fencing, holder: row.holder,
        message: `VDI session ${id}${by === 'disconnect' ? ' (VM shut down)' : ''}`,
      }, author);
      outcome = out.kind === 'conflict'
        ? { kind: 'conflict', version: out.version.version, ref: out.ref, conflictRef: out.conflictRef, reason: out.reason, chunksChanged: made.layer.entries.length, by, seconds: 0 }
        : { kind: 'fast-forward', version: out.version.version, ref: out.ref, chunksChanged: made.layer.entries.length, by, seconds: 0 };
    }
    outcome.seconds = Math.round(performance.now() - t0) / 1000;
    await this.deps.repo.update(id, { state: 'committed', outcome, updatedAt: this.now().toISOString() });
    await this.releaseLease(await this.get(id));
    await fsp.rm(this.incDir(id), { recursive: true, force: true });
    const fields = { session: id, desktop: row.desktop, image: row.image, parent: row.base, ...outcome, stored: made.stored, bytes: made.bytes };
    if (outcome.kind === 'conflict') this.log.warn(fields, 'vdi session committed as a conflict version');
    else this.log.info(fields, 'vdi session committed');
    return await this.view(id);
  }

  /**
   * The session's fencing if its lease is still current; else re-take the lease when it is free (it
   * ran out while the session sat abandoned) and commit under the new one. The parent check still
   * keeps the version as a conflict if anything else was committed meanwhile.
   */
  private async fencingForCommit(row: VdiSessionRow): Promise<number> {
    const l = await this.deps.meta.desktops.getLease(row.desktop);
    const live = l && l.holder !== null && l.expiresAt > this.now().toISOString();
    if (live && l.holder === row.holder) return l.fencing;
    if (live) return row.fencing ?? 0; // someone else holds it: kept as a conflict
    try {
      const got = await this.deps.desktops.acquireLease(row.desktop, row.holder, this.leaseSeconds);
      await this.deps.repo.update(row.id, { fencing: got.fencing });
      return got.fencing;
    } catch (err) {
      if (isDeskfuseError(err, 'DF_ERR_LEASE_HELD')) return row.fencing ?? 0;
      throw err;
    }
  }

  private async releaseLease(row: VdiSessionRow): Promise<void> {
    if (row.fencing === null) return;
    try {
      await this.deps.desktops.releaseLease(row.desktop, row.fencing);
    } catch (err) {
      // Broken, expired or taken over since: nothing of ours to release.
      if (!isDeskfuseError(err, 'DF_ERR_LEASE_LOST')) throw err;
    }
  }

  /** Keep a connected session's lease; never re-take one that was broken or taken over. */
  private async renew(row: VdiSessionRow): Promise<void> {
    if (row.fencing === null) return;
    const l = await this.deps.meta.desktops.getLease(row.desktop);
    if (!l || l.holder !== row.holder || l.fencing !== row.fencing || l.expiresAt <= this.now().toISOString()) {
      this.log.warn({ session: row.id, desktop: row.desktop, holder: l?.holder ?? null, fencing: l?.fencing ?? null }, 'vdi session no longer holds its lease: its commit will be kept as a conflict');
      return;
    }
    await this.deps.desktops.acquireLease(row.desktop, row.holder, this.leaseSeconds);
  }

  private async renewLeases(): Promise<void> {
    for (const id of this.live.keys()) {
      try {
        await this.renew(await this.get(id));
      } catch (err) {
        this.log.error({ session: id, err }, 'vdi lease renewal failed');
      }
    }
  }

  private notConnected(row: VdiSessionRow): void {
    // A client still opening the increment counts as connected: two opens of one increment must not mix.
    const n = (this.live.get(row.id)?.connections ?? 0) + (this.opening.has(row.id) ? 1 : 0);
    if (n > 0) throw dfError('DF_ERR_VDI_SESSION_BUSY', `VDI session ${row.id} has ${n} client(s) connected; shut the VM down first`, { session: row.id, connections: n });
  }

  private async once(id: string, fn: () => Promise<VdiSessionView>): Promise<VdiSessionView> {
    const running = this.ending.get(id);
    if (running) return running;
    const p = fn().then((v) => {
      if (v.state !== 'open') this.wrote.delete(id);
      return v;
    }).finally(() => this.ending.delete(id));
    this.ending.set(id, p);
    return p;
  }

  private async openIncrement(row: VdiSessionRow, base?: ChunkIndex, onFailed?: (reason: string) => void): Promise<CloudIncrement> {
    return CloudIncrement.open(this.incDir(row.id), base ?? (await this.deps.catalog.index(row.image, row.base)), this.deps.cache, onFailed);
  }

  private incDir(id: string): string {
    return path.join(this.deps.dir, id);
  }
}

function stateError(row: VdiSessionRow, what: string) {
  const v = row.outcome?.version;
  return dfError('DF_ERR_VDI_SESSION_STATE', `VDI session ${row.id} is ${row.state}${v ? ` (version ${v})` : ''}${row.failure ? ` (${row.failure})` : ''}: cannot ${what} it${row.state === 'failed' ? `; discard it: deskfuse vdi session discard ${row.id}` : ''}`, {
    session: row.id, state: row.state, ...(v ? { version: v } : {}),
  });
}
