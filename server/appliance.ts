import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { cachedTokens } from '../src/auth/token-cache.js';
import { hashToken, newToken } from '../src/auth/tokens.js';
import { scrubLocalStore, type ScrubPass } from '../src/chunk/background-scrub.js';
import { FsChunkStore } from '../src/chunk/fs-store.js';
import { PackFileCache } from '../src/chunk/pack-cache.js';
import { PACK_MAX_BYTES } from '../src/chunk/pack.js';
import { openStores } from '../src/chunk/open-stores.js';
import { registerStoreMetrics } from '../src/chunk/store-metrics.js';
import type { ServerConfig } from '../src/config/server.js';
import { Desktops } from '../src/desktop/desktops.js';
import { Endpoints } from '../src/endpoint/endpoints.js';
import { loadTemplates } from '../src/ipxe/render.js';
import { Catalog } from '../src/image/catalog.js';
import { SigningKey } from './signing.js';
import { Lifecycle } from '../src/image/lifecycle.js';
import { runGc, type GcProgress, type GcResult, type StoreUsage } from '../src/gc/gc.js';
import { commitGuard } from '../src/gc/guard.js';
import type { GcLockState } from '../src/gc/model.js';
import { gcStoreOf } from '../src/gc/stores.js';
import { registerUsageMetrics } from '../src/gc/usage-metrics.js';
import { dfError } from '../src/errors.js';
import { MAX_CHUNK_SIZE } from '../src/image/geometry.js';
import { pruneMeta, type PruneCounts } from '../src/meta/prune.js';
import { openConfiguredMeta } from '../src/meta/open.js';
import type { Meta } from '../src/meta/repo.js';
import { Metrics } from '../src/metrics.js';
import { RawChunkCache } from '../src/chunk/raw-cache.js';
import { DeskfuseExports } from '../src/vdi/exports.js';
import { VdiSessions } from '../src/vdi/sessions.js';
import { Admission } from './admission.js';
import { buildApp } from './app.js';
import type { AppContext } from './context.js';
import { forgetSentFiles, setSendRate } from './send-file.js';
import { ensureServerTls, type ServerTls } from '../src/tls/pki.js';

/**
 * Where data lives (all under the data directory):
 *   meta.sqlite (+ -wal, -shm)   images, versions, refs, ref log, token hashes, desktops, leases
 *   chunks/                      chunk store (zstd frames named by BLAKE3 id)
 *   blobs/                       layers and chunk indexes (same format)
 *   deltas/                      per-version deltas (changed 4 KiB blocks), made on first use
 *   store-cache/                 with an S3 store (--store s3://…) instead of the three above: the disk
 *                                cache of the bucket's chunks/, blobs/ and deltas/ (src/chunk/open-stores.ts)
 *   vdi/<session>/               a VDI session's cloud increment (overlay.raw + map.log) until it is committed
 *                                (this server's sessions only: a session lives on the server that made it)
 *   nbd-cache/                   verified raw chunks served over NBD (kept across a clean stop, re-hashed lazily)
 *   pack-cache/                  batch fetches asked for twice, as pack files (made anew at every start)
 *   gc-tmp/                      garbage collection's sorted mark files while a run works
 *   admin.token                  the admin token, mode 0600, written once on first start
 *   tls/                         with TLS on and no admin certificate: the private CA (ca.crt, ca.key 0600,
 *                                ca.fingerprint) and the server certificate it issued (server.crt, server.key)
 */
export const dataPaths = (dataDir: string) => ({
  meta: path.join(dataDir, 'meta.sqlite'),
  /** Garbage collection's sorted mark files while a run works. */
  gcTmp: path.join(dataDir, 'gc-tmp'),
  chunks: path.join(dataDir, 'chunks'),
  blobs: path.join(dataDir, 'blobs'),
  deltas: path.join(dataDir, 'deltas'),
  storeCache: path.join(dataDir, 'store-cache'),
  vdi: path.join(dataDir, 'vdi'),
  nbdCache: path.join(dataDir, 'nbd-cache'),
  packCache: path.join(dataDir, 'pack-cache'),
  adminToken: path.join(dataDir, 'admin.token'),
  quarantine: path.join(dataDir, 'quarantine', 'chunks'),
});

export const MAX_BLOB_SIZE = 1024 * 1024 * 1024;

export interface Appliance {
  app: FastifyInstance;
  ctx: AppContext;
  /** What the NBD server serves (server/services/nbd.ts listens). */
  exports: DeskfuseExports;
  /** This server's name among several (`serverName`): the owner of the VDI sessions it makes. */
  serverName: string;
  /** With TLS on: the certificate, key and the CA clients pin (server/tls.ts listens with them). */
  tls?: ServerTls;
  /** Set only on the first start, when the admin token was just generated. */
  newAdminToken?: string;
  /** Delete used or expired tokens, old events and stale pending endpoints, by the configured retention (server/services/prune.ts runs it). */
  prune(): Promise<PruneCounts>;
  /** Prune every image's versions by its retention policy, and idle deltas (server/services/prune.ts runs it too). */
  pruneVersions(): ReturnType<Lifecycle['pruneAll']>;
  /**
   * One garbage collection of the stores (src/gc/gc.ts): DF_ERR_GC_RUNNING when one runs here or on
   * another server. A dry run changes nothing (and is what `store usage` runs).
   */
  gc(opts?: GcRunOptions): Promise<GcResult>;
  /** What a run here does now (or its result, or why it failed), and the database's lock row (the last run of any server). */
  gcStatus(run?: string): Promise<GcStatus>;
  /** One background scrub pass of the local chunk store (server/services/scrub.ts runs it); undefined on an S3 store (its reads verify). */
  scrub(signal?: AbortSignal): Promise<ScrubPass | undefined>;
  close(): Promise<void>;
}

export interface GcRunOptions {
  dryRun?: boolean;
  onProgress?: (p: GcProgress) => void;
  onStarted?: (run: string) => void;
}

export interface GcStatus {
  running: (GcProgress & { run: string; dryRun: boolean }) | null;
  /** The asked-for run, once finished here. */
  result: GcResult | null;
  error: { code: string; message: string } | null;
  lock: GcLockState | null;
}

export interface ApplianceOptions {
  /** The clock for versions, ref moves, token expiry and leases (tests pass one they can advance). */
  now?: () => Date;
  /**
   * Where this server keeps VDI increments and its NBD chunk cache (default under the data directory).
   * Tests that run two servers on one data directory (standing in for a shared database and store) give each its own.
   */
  vdiDir?: string;
  nbdCacheDir?: string;
  /** Awaited between GC batches (tests slow a run down to kill the server in the middle of it). */
  gcStep?: (phase: string) => Promise<void>;
  /** Boot events larger than this (bytes) are published by number (default 7000, under PostgreSQL's NOTIFY limit); tests lower it. */
  notifyLimit?: number;
}

export async function openAppliance(config: ServerConfig, log?: FastifyBaseLogger, opts: ApplianceOptions = {}): Promise<Appliance> {
  const p = dataPaths(config.dataDir);
  await fsp.mkdir(config.dataDir, { recursive: true, mode: 0o750 });
  // Before the database: an unusable certificate stops the start with nothing else done.
  const tls = config.tls.mode === 'on' ? await openTls(config) : undefined;
  const meta = await openConfiguredMeta(config.meta, p.meta, log);
  // Every request authenticates: token lookups are remembered a few seconds (src/auth/token-cache.ts).
  meta.tokens = cachedTokens(meta.tokens);
  try {
    const { chunks, blobs, deltas, where, tallies } = await openStores(config, p, { maxChunkSize: MAX_CHUNK_SIZE, maxBlobSize: MAX_BLOB_SIZE });
    log?.info({ store: where }, 'chunk store');
    const metrics = new Metrics();
    registerStoreMetrics(metrics, tallies);
    const now = opts.now ?? (() => new Date());
    // Batch fetches asked for twice are kept as pack files (a storm); chunk files the sender thread
    // keeps open, and packs that may hold their bytes, go when the store drops or quarantines chunks.
    let packs: PackFileCache | undefined;
    if (chunks instanceof FsChunkStore) {
      packs = await PackFileCache.open(p.packCache, config.packCache.mib * 1024 * 1024, chunks, PACK_MAX_BYTES, (err) => log?.debug({ err }, 'pack file not cached'));
      chunks.onForget = () => {
        forgetSentFiles();
        packs?.clear();
      };
    }
    // Servers sharing a PostgreSQL database share its key (server/signing.ts); SQLite keeps it in files.
    const signing = await SigningKey.open(config.dataDir, meta.engine.dialect === 'postgres' ? meta.engine : undefined);
    log?.info({ keyId: signing.keyId }, 'version signing key');
    const catalog = new Catalog({ images: meta.images, chunks, blobs, now, guard: commitGuard(meta.gc), signer: signing, ...(log ? { log } : {}) });
    const desktops = new Desktops({ meta, catalog, now, ...(log ? { log } : {}) });
    const newAdminToken = await ensureAdminToken(meta, p.adminToken);
    const nb = config.netboot;
    const endpoints = new Endpoints({
      repo: meta.endpoints, bus: meta.engine, ...(opts.notifyLimit ? { notifyLimit: opts.notifyLimit } : {}), meta, desktops, now, autoEnrol: nb.autoEnrol, enrolment: config.enrolment, commitWindowMs: nb.commitWindowSeconds * 1000, ...(log ? { log } : {}),
    });
    const unlisten = await endpoints.listen();
    const boot = { dir: nb.bootDir, templates: loadTemplates(), publicUrl: nb.publicUrl, kernelArgs: nb.kernelArgs, retrySeconds: nb.retrySeconds };
    const vdiDir = opts.vdiDir ?? p.vdi;
    await fsp.mkdir(vdiDir, { recursive: true, mode: 0o750 });
    const cache = new RawChunkCache(chunks, opts.nbdCacheDir ?? p.nbdCache, config.nbd.cacheMiB * 1024 * 1024);
    const sessions = new VdiSessions({
      repo: meta.vdi, meta, catalog, desktops, chunks, cache, dir: vdiDir, now, server: config.serverName,
      leaseSeconds: config.nbd.leaseSeconds, checkpointSeconds: config.nbd.checkpointSeconds, heartbeatSeconds: config.nbd.heartbeatSeconds, ...(log ? { log } : {}),
    });
    // Increments of sessions committed or discarded through another server while this one was down.
    await sessions.sweep();
    const exports = new DeskfuseExports({ catalog, sessions, meta, cache, anonymousRead: config.nbd.anonymousRead, now });
    const vdi = { sessions, serverName: config.serverName, nbd: { port: null, publicHost: config.nbd.publicHost, listenHost: config.nbd.listen?.host ?? null } };
    const { heavyTransfers, retryAfterSeconds, maxMbitPerSecond } = config.admission;
    // The sender thread is the process's: its bucket is this server's uplink cap (Mbit/s → bytes/s).
    if (!setSendRate(maxMbitPerSecond * 125_000) && maxMbitPerSecond > 0) log?.warn({ maxMbitPerSecond }, 'admission.maxMbitPerSecond needs the native addon (npm run build): no cap');
    const admission = new Admission(heavyTransfers, retryAfterSeconds);
    const { keepLast, keepDays, conflictDays, deltaIdleDays, pruneVersions } = config.retention;
    const lifecycle = new Lifecycle({
      meta, blobs, deltas, defaults: { keepLast, keepDays, conflictDays }, deltaIdleDays, pruneVersions: pruneVersions === 1, now, ...(log ? { log } : {}),
      discardSession: (id) => sessions.discard(id, 'admin', true),
    });
    const ctx: AppContext = { catalog, desktops, chunks, meta, metrics, deltas, maxChunkSize: MAX_CHUNK_SIZE, bodyLimit: config.bodyLimit, now, endpoints, boot, vdi, admission, lifecycle, signing: { key: signing, headSeconds: config.signing.headSeconds }, ...(packs ? { packs } : {}) };
    if (tls) ctx.tls = { port: config.tls.listen.port, caFingerprint: tls.caFingerprint, plainHttp: config.tls.plainHttp };
    // Garbage collection: one run at a time in this process (the database lock covers every server).
    let gcRunning: { progress: GcProgress; run?: string } | undefined;
    let lastUsage: StoreUsage | undefined;
    registerUsageMetrics(metrics, () => lastUsage);
    // Runs of this server, by id: in progress, finished (result) or failed (error); the last few are kept.
    const runs = new Map<string, { dryRun: boolean; progress: GcProgress; result?: GcResult; error?: { code: string; message: string } }>();
    const gc = async (o: GcRunOptions = {}): Promise<GcResult> => {
      if (gcRunning && !o.dryRun) throw dfError('DF_ERR_GC_RUNNING', `a garbage collection is already running on ${config.serverName} (${gcRunning.progress.phase})`, { holder: config.serverName, phase: gcRunning.progress.phase });
      const mine: { progress: GcProgress; run?: string } = { progress: { phase: 'start', done: 0 } };
      if (!o.dryRun) gcRunning = mine;
      try {
        const r = await runGc({
          repo: meta.gc, images: meta.images, chunks: gcStoreOf(chunks), blobs: gcStoreOf(blobs), deltas,
          readBlob: async (id) => (await blobs.get(id)).raw, tmpDir: p.gcTmp, holder: config.serverName,
          graceMs: config.gc.graceSeconds * 1000, leaseMs: config.gc.leaseSeconds * 1000,
          onProgress: (pr) => {
            mine.progress = pr;
            const r = mine.run && runs.get(mine.run);
            if (r) r.progress = pr;
            o.onProgress?.(pr);
          },
          onStarted: (run) => {
            mine.run = run;
            runs.set(run, { dryRun: o.dryRun ?? false, progress: mine.progress });
            while (runs.size > 16) runs.delete(runs.keys().next().value!);
            o.onStarted?.(run);
          },
          ...(opts.gcStep ? { step: opts.gcStep } : {}), ...(log ? { log } : {}),
        }, { dryRun: o.dryRun ?? false });
        lastUsage = r.usage;
        const kept = runs.get(r.run);
        if (kept) kept.result = r;
        return r;
      } catch (err) {
        const kept = mine.run && runs.get(mine.run);
        if (kept) kept.error = { code: (err as { code?: string }).code ?? 'DF_ERR_INTERNAL', message: (err as Error).message };
        throw err;
      } finally {
        if (gcRunning === mine) gcRunning = undefined;
      }
    };
    const gcStatus = async (run?: string): Promise<GcStatus> => {
      const r = run ? runs.get(run) : undefined;
      const live = r
        ? (r.result || r.error ? null : { ...r.progress, run: run!, dryRun: r.dryRun })
        : gcRunning?.run ? { ...gcRunning.progress, run: gcRunning.run, dryRun: false } : null;
      return { running: live, result: r?.result ?? null, error: r?.error ?? null, lock: (await meta.gc.state()) ?? null };
    };
    ctx.gc = { run: gc, status: gcStatus };
    const app = await buildApp(ctx, log);
    return {
      app, ctx, exports, serverName: config.serverName, ...(newAdminToken ? { newAdminToken } : {}), ...(tls ? { tls } : {}),
      gc, gcStatus,
      prune: () => pruneMeta(meta, now(), { ...config.retention, pendingSeconds: config.enrolment.pendingSeconds }),
      pruneVersions: () => lifecycle.pruneAll(),
      scrub: async (signal) => {
        if (!(chunks instanceof FsChunkStore)) return undefined;
        const invalid = metrics.counter('deskfuse_chunks_invalid_total', 'Chunks refused or found corrupt, by where');
        const scrubbed = metrics.counter('deskfuse_scrub_chunks_total', 'Chunks read back and verified by the background scrub');
        const pass = await scrubLocalStore(chunks, {
          bytesPerSecond: config.scrub.mibPerSecond * 1024 * 1024, quarantine: p.quarantine, ...(signal ? { signal } : {}),
          busy: () => admission.running > 0, // endpoints first: the pass waits out a storm
          onCorrupt: (id, movedTo) => {
            invalid(1, { where: 'scrub' });
            log?.error({ id, movedTo }, 'a stored chunk is corrupt: moved to quarantine (the next publish or commit that has it stores it again)');
          },
        });
        scrubbed(pass.chunks);
        return pass;
      },
      close: async () => {
        sessions.close();
        cache.close();
        await app.close();
        deltas.close();
        await unlisten();
        await meta.close();
      },
    };
  } catch (err) {
    await meta.close();
    throw err;
  }
}

/** The TLS material of config `tls` (src/tls/pki.ts); a private CA's fingerprint is also kept in tls/ca.fingerprint. */
async function openTls(config: ServerConfig): Promise<ServerTls> {
  const t = config.tls;
  const material = await ensureServerTls({
    dir: t.dir, ...(t.names ? { names: t.names } : {}), ...(t.certFile ? { certFile: t.certFile } : {}), ...(t.keyFile ? { keyFile: t.keyFile } : {}), ...(t.caFile ? { caFile: t.caFile } : {}),
  });
  if (!t.certFile) await fsp.writeFile(path.join(t.dir, 'ca.fingerprint'), `${material.caFingerprint}\n`, { mode: 0o644 });
  return material;
}

/**
 * First start: generate the admin token, keep only its hash, write it to admin.token (0600). The
 * check and the insert are one transaction: of several servers starting at once on one database,
 * one makes the token (the others keep no admin.token: use the first one's, or mint one through it).
 * The token is on disk (admin.token.tmp, then renamed) before its hash is stored: a crash never leaves a token nobody has.
 */
async function ensureAdminToken(meta: Meta, file: string): Promise<string | undefined> {
  if ((await meta.tokens.countTokens('admin')) > 0) return undefined;
  const token = newToken('dfa');
  const tmp = `${file}.tmp`;
  // The file first: a crash before the row leaves a file the next start overwrites, never a token in
  // the database that no file holds. Of servers starting at once, one stores its token; the others drop their file.
  await fsp.writeFile(tmp, `${token}\n`, { mode: 0o600 });
  await fsp.rename(tmp, file);
  if (!(await meta.tokens.addTokenIfNone(hashToken(token), 'admin', new Date().toISOString()))) {
    await fsp.rm(file, { force: true });
    return undefined;
  }
  return token;
}
