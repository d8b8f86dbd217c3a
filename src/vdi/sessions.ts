import { randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { hashToken, newToken } from '../auth/tokens.js';
import type { RawChunkCache } from '../chunk/raw-cache.js';
import { idHex, isZeroId } from '../chunk/id.js';
import type { ChunkStore } from '../chunk/store.js';
import { desktopRef, type Desktops } from '../desktop/desktops.js';
import { dfError, isDeskfuseError } from '../errors.js';
import type { Catalog } from '../image/catalog.js';
import type { ChunkIndex } from '../image/chunk-index.js';
import { encodeLayer } from '../image/layer.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { Meta } from '../meta/repo.js';
import { checkpointLayer } from './checkpoint.js';
import { incrementLayer } from './commit.js';
import { CloudIncrement, type IncrementStats } from './increment.js';
import { nbdUrl } from './launch.js';
import type { VdiOutcome, VdiRepo, VdiSessionRow, VdiState } from './model.js';

/**
 * VDI sessions: create (take the desktop's lease, fix the base version, make the cloud increment),
 * serve (the NBD export opens the increment through `attach`), commit (increment → layer → a
 * `vdi-commit` version with parent = base, fast-forward or kept as a conflict) and discard.
 *
 * The lease is held while the session is open and renewed while a client is connected; an abandoned
 * session's lease runs out after its TTL, so a VOI endpoint can take the desktop back. Committing it
 * later re-takes a free lease; if another holder has it, the version is kept as a conflict.
 *
 * Several servers (one metadata database): a session lives on the server that made it (`server` in its
 * row, the NBD address in its URL), since its increment is that server's local disk. The owner
 * checkpoints it (after a FLUSH, at most every `checkpointSeconds`, and when its last client leaves):
 * the changed chunks go to the chunk store and a staged layer is recorded in the row. While a client is
 * connected the owner refreshes `heartbeatAt`, and clears it when the last one has left (after the
 * final checkpoint). Another server commits or discards a session only when that heartbeat is null or
 * older than 3 heartbeats (or when told `force`: the owner is dead): it takes the session over in one
 * conditional UPDATE (server, heartbeat and state as it read them) and commits the last checkpoint.
 * An owner that finds its session taken over refuses the stale export and drops its increment.
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
  /** This server's name (`serverName`): the owner of the sessions it makes. */
  server: string;
  /** Least seconds between two checkpoints of a session. Default 10. */
  checkpointSeconds?: number;
  /** Seconds between two heartbeats of a connected session; stale after 3. Default 10. */
  heartbeatSeconds?: number;
}

export interface VdiSessionView extends Omit<VdiSessionRow, 'secretHash'> {
  /** `session/ID` (the secret follows as `:SECRET` in the name a client sends). */
  export: string;
  /** nbd://OWNER:PORT/session/ID (nbds:// with TLS), on the server that owns the session (the client appends `:SECRET`); null without NBD. */
  url: string | null;
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
  /** nbd://OWNER:PORT/session/ID:SECRET, nbds:// when the server speaks TLS (null without NBD). */
  url: string | null;
}

/** A session's increment while clients use it. */
interface Live {
  inc: CloudIncrement;
  connections: number;
  /** The checkpoint running, the one waiting for its turn, and when the last one ended (ms). */
  checkpoint?: Promise<void>;
  timer?: NodeJS.Timeout;
  again?: boolean;
  lastCheckpoint: number;
}

/** What this server last recorded as a session's checkpoint: the next one starts from its entries. */
interface Recorded {
  layer: string;
  entries: Map<number, Buffer>;
}

const ID_RE = /^[0-9a-f]{10}$/;
export const sessionExport = (id: string) => `session/${id}`;

export class VdiSessions {
  /**
   * NBD speaks TLS here (set when the NBD service starts): session URLs are nbds://. The servers of a
   * pool share their NBD config, so a session owned by another server is shown the same way.
   */
  nbdTls = false;
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
  private readonly beat: NodeJS.Timeout;
  private readonly checkpointMs: number;
  private readonly heartbeatMs: number;
  /** Sessions with a client connected here (or its last one leaving): their heartbeat is kept fresh. */
  private readonly serving = new Set<string>();
  private readonly recorded = new Map<string, Recorded>();

  constructor(private readonly deps: VdiSessionsDeps) {
    this.log = deps.log ?? silentLogger;
    this.now = deps.now ?? (() => new Date());
    this.leaseSeconds = deps.leaseSeconds ?? 3600;
    this.timer = setInterval(() => void this.renewLeases(), (this.leaseSeconds * 1000) / 3);
    this.timer.unref();
    this.checkpointMs = (deps.checkpointSeconds ?? 10) * 1000;
    this.heartbeatMs = (deps.heartbeatSeconds ?? 10) * 1000;
    this.beat = setInterval(() => void this.heartbeat(), this.heartbeatMs);
    this.beat.unref();
  }

  /** This server's name. */
  get server(): string {
    return this.deps.server;
  }

  /** The server that owns a row (rows from before ownership was recorded are this server's). */
  owner(row: Pick<VdiSessionRow, 'server'>): string {
    return row.server || this.deps.server;
  }

  /**
   * At start: drop the increments this server keeps for sessions that ended, or that another server
   * took over (committed or discarded from there while this one was down).
   */
  async sweep(): Promise<string[]> {
    const dropped: string[] = [];
    let names: string[];
    try {
      names = await fsp.readdir(this.deps.dir);
    } catch {
      return dropped;
    }
    for (const id of names) {
      if (!ID_RE.test(id) || this.live.has(id)) continue;
      const row = await this.deps.repo.get(id);
      if (row && this.owner(row) === this.deps.server && (row.state === 'open' || row.state === 'committing' || row.state === 'failed')) continue;
      await fsp.rm(this.incDir(id), { recursive: true, force: true });
      this.log.warn({ session: id, state: row?.state ?? null, server: row ? this.owner(row) : null }, 'vdi increment dropped: the session ended or was taken over by another server');
      dropped.push(id);
    }
    return dropped;
  }

  /** `nbd`: where hypervisors reach this server's NBD export (recorded in the row; null: NBD is off). */
  async create(req: { desktop: string; force?: boolean; autoCommit?: boolean }, author: string, nbd: { host: string; port: number; tls?: boolean } | null = null): Promise<CreatedSession> {
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
        server: this.deps.server, nbdHost: nbd?.host ?? null, nbdPort: nbd?.port ?? null, heartbeatAt: null, checkpointLayer: null, checkpointAt: null,
        id, desktop: d.name, image: d.image, base: base.version, mode: d.mode, holder, fencing, secretHash: hashToken(secret),
        autoCommit: req.autoCommit ?? true, state: 'open', createdAt: at, createdBy: author, updatedAt: at,
        lastConnectAt: null, lastDisconnectAt: null, lastDisconnect: null, outcome: null, failure: null,
      });
      this.log.info({ session: id, desktop: d.name, image: d.image, base: base.version, fencing, author, server: this.deps.server }, 'vdi session created');
      const exportName = `${sessionExport(id)}:${secret}`;
      return { session: await this.view(id), secret, exportName, url: nbd ? nbdUrl({ ...nbd, exportName }) : null };
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
    return this.viewOf(await this.get(id), withStats);
  }

  private viewOf(full: VdiSessionRow, withStats = false): VdiSessionView {
    const { secretHash: _s, ...row } = full;
    const id = row.id;
    const live = this.live.get(id);
    const stats = live?.inc.stats;
    const url = row.nbdHost !== null && row.nbdPort !== null ? nbdUrl({ host: row.nbdHost, port: row.nbdPort, exportName: sessionExport(id), tls: this.nbdTls }) : null;
    return {
      ...row, server: this.owner(row), export: sessionExport(id), url, connections: live?.connections ?? 0,
      ...(withStats && stats ? { increment: { changed: stats.changed, live: { bytesWritten: stats.bytesWritten, flushes: stats.flushes, lastFlushAt: stats.lastFlushAt } } } : {}),
    };
  }

  /** With stats: opens the increment of an idle open session briefly. */
  async show(id: string): Promise<VdiSessionView> {
    const row = await this.get(id);
    if (row.state !== 'open' || this.live.has(id) || this.owner(row) !== this.deps.server) return await this.view(id, true);
    const inc = await this.openIncrement(row);
    try {
      return { ...(await this.view(id)), increment: { changed: inc.stats.changed, live: null } };
    } finally {
      await inc.close();
    }
  }

  async list(opts: { desktop?: string; states?: VdiState[] } = {}): Promise<VdiSessionView[]> {
    return (await this.deps.repo.list(opts)).map((r) => this.viewOf(r));
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
    let row = await this.get(id);
    if (row.state !== 'open') throw stateError(row, 'serve');
    this.checkOwner(row);
    // One conditional UPDATE: a server taking the session over at this instant either sees this
    // heartbeat (and refuses) or has moved the session first (and this connection is refused).
    const at = this.now().toISOString();
    const claimed = await this.deps.repo.updateIf(id, { state: 'open', server: row.server }, { server: this.deps.server, lastConnectAt: at, heartbeatAt: at, updatedAt: at });
    if (!claimed) {
      row = await this.get(id);
      if (row.state !== 'open') throw stateError(row, 'serve');
      this.checkOwner(row);
      throw dfError('DF_ERR_VDI_SESSION_BUSY', `VDI session ${id} changed while connecting; connect again`, { session: id });
    }
    this.serving.add(id);
    let live = this.live.get(id);
    if (!live) {
      let p = this.opening.get(id);
      if (!p) {
        p = (async () => ({ inc: await this.openIncrement(row, undefined, (reason) => void this.fail(id, reason)), connections: 0, lastCheckpoint: -Infinity }))();
        this.opening.set(id, p);
        p.finally(() => this.opening.delete(id)).catch(() => {});
      }
      try {
        live = await p;
      } catch (err) {
        if (!this.live.has(id)) await this.idle(id);
        throw err;
      }
      this.live.set(id, live);
    }
    live.connections++;
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
    const mine = row.state === 'open' && this.owner(row) === this.deps.server;
    const commitNow = how.clean && this.wrote.has(id) && row.autoCommit && mine && !live.inc.failure;
    this.live.delete(id);
    const closing = (async () => {
      try {
        if (live.timer) clearTimeout(live.timer);
        live.timer = undefined;
        await live.checkpoint;
        if (!live.inc.failure) await live.inc.flush(); // a failed increment has nothing it could make durable
        // The last client left: the checkpoint catches up with the increment, so that another server
        // committing the session while this one is idle (or gone) loses nothing. Not for a session about
        // to be committed from the increment here.
        if (!live.inc.failure && !commitNow && (live.inc.dirtyCount > 0 || this.wrote.has(id))) {
          await this.checkpoint(id, live, true).catch((err) => this.log.error({ session: id, err }, 'vdi final checkpoint failed: another server would commit the previous one'));
        }
      } finally {
        await live.inc.close();
        await this.idle(id);
        // Taken over by another server while it was served here: this copy is stale.
        const now = await this.deps.repo.get(id);
        if (now && (this.owner(now) !== this.deps.server || now.state === 'committed' || now.state === 'discarded')) {
          await fsp.rm(this.incDir(id), { recursive: true, force: true });
        }
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

  /** `force` (from another server): the owner is dead, take the session over even if its heartbeat is fresh. */
  async commit(id: string, by: 'disconnect' | 'admin', author: string, force = false): Promise<VdiSessionView> {
    return this.once(id, () => this.doCommit(id, by, author, force));
  }

  async discard(id: string, by: 'disconnect' | 'admin' = 'admin', force = false): Promise<VdiSessionView> {
    return this.once(id, async () => {
      let row = await this.get(id);
      if (row.state === 'discarded') return await this.view(id);
      // A commit that failed half-way ('committing') may be retried or given up; a failed session only given up.
      if (row.state !== 'open' && row.state !== 'committing' && row.state !== 'failed') throw stateError(row, 'discard');
      if (this.owner(row) !== this.deps.server) row = await this.takeOver(row, {}, force);
      this.notConnected(row);
      const outcome: VdiOutcome = { kind: 'discarded', version: null, ref: null, chunksChanged: 0, by, seconds: 0 };
      const done = await this.deps.repo.updateIf(id, { server: row.server, state: row.state }, { state: 'discarded', outcome, updatedAt: this.now().toISOString() });
      if (!done) return await this.changedMeanwhile(id, 'discard');
      await this.releaseLease(row);
      await fsp.rm(this.incDir(id), { recursive: true, force: true });
      this.log.info({ session: id, desktop: row.desktop, by }, 'vdi session discarded');
      return await this.view(id);
    });
  }

  close(): void {
    clearInterval(this.timer);
    clearInterval(this.beat);
    for (const live of this.live.values()) if (live.timer) clearTimeout(live.timer);
  }

  /**
   * After a FLUSH made writes durable here: checkpoint the session, at most one at a time and at
   * least `checkpointSeconds` after the previous one ended.
   */
  flushed(id: string): void {
    const live = this.live.get(id);
    if (!live || live.inc.failure || live.inc.dirtyCount === 0) return;
    if (live.checkpoint || live.timer) {
      live.again = true;
      return;
    }
    const wait = Math.max(0, live.lastCheckpoint + this.checkpointMs - performance.now());
    live.timer = setTimeout(() => {
      live.timer = undefined;
      live.checkpoint = this.checkpoint(id, live, false)
        .catch((err) => this.log.error({ session: id, err }, 'vdi checkpoint failed: its chunks are tried again at the next one'))
        .finally(() => {
          live.checkpoint = undefined;
          live.lastCheckpoint = performance.now();
          if (live.again && this.live.get(id) === live) {
            live.again = false;
            this.flushed(id);
          }
        });
    }, wait);
    live.timer.unref();
  }

  /**
   * Store the chunks written since the last checkpoint, stage the layer a commit would make (the
   * previous checkpoint's entries updated with them) and record it in the row: one conditional
   * UPDATE, made only while the session is open and still this server's (else it was taken over:
   * the increment is revoked). `always`: record even when nothing changed (the last client left).
   */
  private async checkpoint(id: string, live: Live, always: boolean): Promise<void> {
    const row = await this.get(id);
    if (row.state !== 'open' || this.owner(row) !== this.deps.server) return this.takenOver(id, live, row);
    if (row.mode === 'restore') return; // discarded, never committed: nothing to keep
    const prev = this.recorded.get(id);
    const full = !prev || prev.layer !== row.checkpointLayer;
    if (!full && !always && live.inc.dirtyCount === 0) return;
    const t0 = performance.now();
    const base = await this.deps.catalog.index(row.image, row.base);
    const snap = await live.inc.snapshot(full);
    let made;
    let staged;
    let done;
    try {
      made = await checkpointLayer(snap, base, this.deps.chunks, full ? new Map() : prev.entries);
      staged = await this.deps.catalog.stageLayer(row.image, encodeLayer(made.layer));
      // Until the row names it, garbage collection keeps the layer and cancels candidates among the chunks just stored.
      const before = full ? undefined : prev.entries;
      const fresh = [...made.entries].filter(([i, c]) => !isZeroId(c) && !before?.get(i)?.equals(c)).map(([, c]) => idHex(c));
      const release = await this.deps.catalog.holdStaged(row.image, staged.layer, fresh);
      try {
        const at = this.now().toISOString();
        done = await this.deps.repo.updateIf(id, { state: 'open', server: row.server }, { checkpointLayer: staged.layer, checkpointAt: at });
      } finally {
        await release();
      }
    } catch (err) {
      // nothing recorded: the positions stay dirty, so the next checkpoint takes them again
      snap.release(true);
      throw err;
    }
    snap.release(!done);
    if (!done) return this.takenOver(id, live, await this.get(id));
    this.recorded.set(id, { layer: staged.layer, entries: made.entries });
    this.log.info({ session: id, desktop: row.desktop, layer: staged.layer, chunks: made.layer.entries.length, read: snap.positions.length, stored: made.stored, full, seconds: Math.round(performance.now() - t0) / 1000 }, 'vdi checkpoint');
  }

  /** The session is no longer this server's to serve: refuse writes on the live increment. */
  private takenOver(id: string, live: Live, row: VdiSessionRow): void {
    const reason = `VDI session ${id} is ${row.state} through server ${this.owner(row)}; this server's copy is stale`;
    if (!live.inc.failure) this.log.warn({ session: id, state: row.state, server: this.owner(row) }, 'vdi session taken over by another server: its export here refuses writes');
    live.inc.revoke(reason);
  }

  /** Keep the heartbeat of the sessions served (or being committed) here fresh; one that was taken over is revoked. */
  private async heartbeat(): Promise<void> {
    for (const id of this.serving) {
      try {
        const at = this.now().toISOString();
        // Taken over = moved to another server (a commit or discard here keeps the server).
        const ok = await this.deps.repo.updateIf(id, { server: this.deps.server }, { heartbeatAt: at });
        const live = this.live.get(id);
        if (!ok && live) this.takenOver(id, live, await this.get(id));
      } catch (err) {
        this.log.error({ session: id, err }, 'vdi heartbeat failed');
      }
    }
  }

  /** No client is served here any more: clear the heartbeat (if the session is still this server's). */
  private async idle(id: string): Promise<void> {
    this.serving.delete(id);
    try {
      await this.deps.repo.updateIf(id, { server: this.deps.server }, { heartbeatAt: null });
    } catch (err) {
      this.log.error({ session: id, err }, 'vdi heartbeat could not be cleared: another server waits for it to go stale');
    }
  }

  /** A session is served by its owner only: elsewhere DF_ERR_VDI_SESSION_ELSEWHERE names it. */
  checkOwner(row: VdiSessionRow): void {
    const owner = this.owner(row);
    if (owner === this.deps.server) return;
    const where = row.nbdHost !== null && row.nbdPort !== null ? ` (${nbdUrl({ host: row.nbdHost, port: row.nbdPort, exportName: sessionExport(row.id), tls: this.nbdTls })})` : '';
    throw dfError('DF_ERR_VDI_SESSION_ELSEWHERE', `VDI session ${row.id} lives on server ${owner}${where}, not on ${this.deps.server}: connect there`, {
      session: row.id, server: owner, ...(row.nbdHost !== null ? { host: row.nbdHost } : {}), ...(row.nbdPort !== null ? { port: row.nbdPort } : {}),
    });
  }

  /**
   * Another server's session: take it over (one conditional UPDATE on the owner, heartbeat and state
   * read) when its owner serves no client (no heartbeat, or one older than 3 heartbeats), or `force`.
   */
  private async takeOver(row: VdiSessionRow, patch: Partial<VdiSessionRow>, force: boolean): Promise<VdiSessionRow> {
    const owner = this.owner(row);
    const ageMs = row.heartbeatAt === null ? Infinity : this.now().getTime() - Date.parse(row.heartbeatAt);
    if (!force && ageMs < 3 * this.heartbeatMs) {
      throw dfError('DF_ERR_VDI_SESSION_BUSY', `VDI session ${row.id} lives on server ${owner}, which serves a client (heartbeat ${row.heartbeatAt}); commit or discard it there, or, if ${owner} is dead, here with --force`, {
        session: row.id, server: owner, heartbeatAt: row.heartbeatAt,
      });
    }
    const got = await this.deps.repo.updateIf(row.id, { server: row.server, heartbeatAt: row.heartbeatAt, state: row.state }, { ...patch, server: this.deps.server, heartbeatAt: null, updatedAt: this.now().toISOString() });
    if (!got) throw dfError('DF_ERR_VDI_SESSION_BUSY', `VDI session ${row.id} changed on server ${owner} meanwhile; try again`, { session: row.id, server: owner });
    this.log.warn({ session: row.id, desktop: row.desktop, from: owner, heartbeatAt: row.heartbeatAt, force, checkpoint: row.checkpointLayer, checkpointAt: row.checkpointAt }, 'vdi session taken over from another server');
    return got;
  }

  /** A conditional UPDATE found the row changed (another server got there first): answer what it is now. */
  private async changedMeanwhile(id: string, what: string): Promise<VdiSessionView> {
    const row = await this.get(id);
    if ((what === 'commit' && row.state === 'committed') || (what === 'discard' && row.state === 'discarded')) return await this.view(id);
    throw dfError('DF_ERR_VDI_SESSION_BUSY', `VDI session ${id} changed through server ${this.owner(row)} meanwhile (${row.state}); try again`, { session: id, server: this.owner(row), state: row.state });
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

  private async doCommit(id: string, by: 'disconnect' | 'admin', author: string, force: boolean): Promise<VdiSessionView> {
    const t0 = performance.now();
    let row = await this.get(id);
    if (row.state === 'committed') return await this.view(id);
    if (row.state !== 'open' && row.state !== 'committing') throw stateError(row, 'commit');
    if (row.mode === 'restore') {
      throw dfError('DF_ERR_RESTORE_MODE', `desktop ${row.desktop} is in restore mode: its VDI sessions are discarded, never committed`, { desktop: row.desktop, session: id });
    }
    // Another server's session: its last checkpoint is what this server can commit.
    const fromCheckpoint = this.owner(row) !== this.deps.server || !(await exists(this.incDir(id)));
    if (this.owner(row) !== this.deps.server) row = await this.takeOver(row, { state: 'committing' }, force);
    this.notConnected(row);
    // The heartbeat runs while the commit does: no other server takes a session over mid-commit
    // unless this one dies (then the heartbeat goes stale and the commit is rerun there).
    const at = this.now().toISOString();
    const claimed = await this.deps.repo.updateIf(id, { server: row.server, state: row.state }, { state: 'committing', heartbeatAt: at, updatedAt: at });
    if (!claimed) return await this.changedMeanwhile(id, 'commit');
    row = claimed;
    this.serving.add(id);
    try {
      return await this.commitClaimed(row, by, author, fromCheckpoint, t0);
    } finally {
      if (!this.live.has(id)) await this.idle(id);
    }
  }

  private async commitClaimed(row: VdiSessionRow, by: 'disconnect' | 'admin', author: string, fromCheckpoint: boolean, t0: number): Promise<VdiSessionView> {
    const id = row.id;
    let made: { layer: { entries: unknown[] }; stored: number; bytes: number; staged?: string };
    if (fromCheckpoint) {
      // The checkpoint's chunks were stored before its layer was recorded.
      const entries = row.checkpointLayer === null ? 0 : (await this.deps.catalog.stagedLayer(row.checkpointLayer)).entries.length;
      made = { layer: { entries: new Array(entries) }, stored: 0, bytes: 0, ...(row.checkpointLayer !== null ? { staged: row.checkpointLayer } : {}) };
      this.log.warn({ session: id, desktop: row.desktop, checkpoint: row.checkpointLayer, checkpointAt: row.checkpointAt, chunks: entries }, 'vdi session committed from its last checkpoint: writes after it are lost');
    } else {
      const base = await this.deps.catalog.index(row.image, row.base);
      const inc = await this.openIncrement(row, base);
      try {
        made = await incrementLayer(inc, base, this.deps.chunks);
      } finally {
        await inc.close();
      }
    }
    let outcome: VdiOutcome;
    if (made.layer.entries.length === 0) {
      outcome = { kind: 'unchanged', version: null, ref: desktopRef(row.desktop), chunksChanged: 0, by, seconds: 0 };
    } else {
      const staged = made.staged !== undefined ? { layer: made.staged } : await this.deps.catalog.stageLayer(row.image, encodeLayer(made.layer as Parameters<typeof encodeLayer>[0]));
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
      if (v.state !== 'open') {
        this.wrote.delete(id);
        this.recorded.delete(id);
      }
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

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(() => true, () => false);
}

function stateError(row: VdiSessionRow, what: string) {
  const v = row.outcome?.version;
  return dfError('DF_ERR_VDI_SESSION_STATE', `VDI session ${row.id} is ${row.state}${v ? ` (version ${v})` : ''}${row.failure ? ` (${row.failure})` : ''}: cannot ${what} it${row.state === 'failed' ? `; discard it: deskfuse vdi session discard ${row.id}` : ''}`, {
    session: row.id, state: row.state, ...(v ? { version: v } : {}),
  });
}
