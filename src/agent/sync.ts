import { setTimeout as sleep } from 'node:timers/promises';
import { ServerList } from '../api/client.js';
import { hashBytes, idHex, isZeroId } from '../chunk/id.js';
import { dfError, isDeskfuseError } from '../errors.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { blocksPerChunk, chunkLength } from '../image/geometry.js';
import { applyLayer, decodeLayer, type Layer } from '../image/layer.js';
import type { VersionList } from '../api/schemas.js';
import { Progress } from '../progress.js';
import { BLOCK_HASH_BYTES, blockHashes, patchBlocks } from '../sync/blockhash.js';
import { readDelta, type DeltaItem } from '../sync/delta.js';
import { plan, type Op } from '../sync/plan.js';
import type { ScanResult } from '../sync/scan.js';
import { scanLocalChanges } from './local-scan.js';
import { commitChanges, mergeHints, sameIndex } from './commit.js';
import { hasDataOutside, readChunkAt, sealGpt } from './disk.js';
import { DiskWriter } from '../disk/writer.js';
import { stopOnDiskFailure } from './disk-failure.js';
import { ChunkFetcher } from './fetcher.js';
import { keysChanged, signedTarget } from './signed.js';
import { emptyHints, freshState, keepLease, openSession, takeLease, type AgentOptions, type Lease, type Session } from './session.js';
import { emptyFingerprints, setFingerprint } from './fingerprints.js';
import { GPT_RESERVE, writeHeader, writeSlotAndHeader, type DiskState } from './state-area.js';

export interface SyncResult {
  desktop: string;
  image: string;
  from: number | null;
  to: number;
  committed: number | null;
  conflict: string | null;
  scanned: boolean;
  /** Seconds the scan took (null: not scanned). */
  scanSeconds: number | null;
  localChanges: number;
  chunksWritten: number;
  chunksPatched: number;
  bytesFetched: number;
  requests: number;
  seconds: number;
  /** The live lease `force` took over (its holder's next commit becomes a conflict). */
  tookLeaseFrom: { holder: string; fencing: number; since: string } | null;
}

const MAX_HOPS = 16;
const JOURNAL_EVERY = 64 * 1024 * 1024;
const ATTEMPTS = 3;

/**
 * `deskfuse agent sync`: bring the disk to the desktop's head. Commits local changes first
 * (persistent) or overwrites them (restore); resumes an interrupted apply; retries with backoff
 * when the server goes away, and a rerun after any crash converges.
 */
export async function agentSync(o: AgentOptions): Promise<SyncResult> {
  if (!o.desktop) throw dfError('DF_ERR_USAGE', 'agent sync needs --desktop NAME');
  // One server list for every attempt: a retry goes on with the server that answered last.
  const server = o.server instanceof ServerList ? o.server : new ServerList(o.server);
  return stopOnDiskFailure(o.disk, () => syncWithRetries({ ...o, server }, o.desktop!));
}

async function syncWithRetries(o: AgentOptions, desktop: string): Promise<SyncResult> {
  const t0 = performance.now();
  let requests = 0;
  let bytes = 0;
  for (let attempt = 1; ; attempt++) {
    let s: Session | undefined;
    try {
      s = await openSession(o, desktop);
      const r = await syncOnce(s, o);
      return { ...r, requests: requests + s.client.stats.requests, bytesFetched: bytes + s.client.stats.bytesReceived, seconds: (performance.now() - t0) / 1000 };
    } catch (err) {
      requests += s?.client.stats.requests ?? 0;
      bytes += s?.client.stats.bytesReceived ?? 0;
      const transient = isDeskfuseError(err) && (err.code === 'DF_ERR_UNREACHABLE' || (err.code === 'DF_ERR_HTTP' && Number(err.fields.status) >= 500));
      if (!transient || attempt >= ATTEMPTS) throw err;
      await sleep(1000 * 2 ** (attempt - 1));
    } finally {
      await s?.disk.close();
    }
  }
}

type SyncCore = Omit<SyncResult, 'requests' | 'bytesFetched' | 'seconds'>;

async function syncOnce(s: Session, o: AgentOptions): Promise<SyncCore> {
  // A disk that is not clean is scanned while the lease and the signed head are asked for: the scan
  // only reads, and its worker threads start up during those round trips rather than after them.
  const scanning = startScan(s);
  try {
    // One writer per persistent desktop; restore desktops never write back, so any number of
    // endpoints may follow one (a classroom of kiosks).
    const lease = s.desktop.mode === 'persistent' ? await takeLease(s, o.force ?? false) : null;
    const stop = lease ? keepLease(s) : null;
    try {
      return await syncLeased(s, o, lease, scanning);
    } finally {
      await stop?.();
    }
  } finally {
    await scanning?.catch(() => {}); // never left running past the run (its error, if any, was thrown by syncLeased)
  }
}

function startScan(s: Session): Promise<ScanResult> | null {
  if (s.state?.state === 'clean') return null;
  // A restore desktop's reset must undo whatever was done to the disk: every chunk is hashed
  // (fingerprints are no proof against a crafted change, state-area.ts "Fingerprints").
  const trusted = s.desktop.mode === 'persistent' ? s.slot?.fingerprints ?? null : null;
  const p = scanLocalChanges(s, trusted);
  p.catch(() => {}); // awaited by syncLeased; a failure before that point must not go unhandled
  return p;
}

async function syncLeased(s: Session, o: AgentOptions, lease: Lease | null, scanning: Promise<ScanResult> | null): Promise<SyncCore> {
  const g = s.geometry;
  let state = s.state;
  // The server's signed word on where to go, checked before anything is written: a refusal
  // (DF_ERR_SIG_*) leaves the disk as it was, and the boot stage boots it as it is.
  let signed = await signedTarget(s, o, state);
  let scan: ScanResult | null = null;
  let actual: ChunkIndex;
  let hints: Buffer;
  let fps: Buffer;
  const from = state?.version ?? null;
  let fresh = false;

  if (scanning) {
    scan = await scanning;
    actual = scan.index;
    hints = mergeHints(scan, s.slot?.hints ?? emptyHints(g));
    fps = scan.fingerprints;
  } else {
    actual = s.slot!.index;
    hints = s.slot!.hints;
    fps = s.slot!.fingerprints ?? emptyFingerprints(g);
  }
  if (!state) {
    // No readable state: blank, or a disk whose state area was overwritten (a partitioning tool, an
    // old layout) and that may hold its OS's only copy of local changes. Only a blank disk, or one
    // the admin said to reprovision, is ours to write.
    if (!o.reprovision && (actual.nonZeroCount() > 0 || await hasDataOutside(s.disk, g.virtualSize))) {
      throw dfError('DF_ERR_DISK_UNKNOWN_DATA', `${s.disk.path} holds data but no deskfuse state, so its local changes cannot be told apart: nothing was written. Copy off what must be kept, then reprovision it (agent sync --reprovision, or reprovision the endpoint)`, {
        disk: s.disk.path, nonZeroChunks: actual.nonZeroCount(),
      });
    }
    // A blank (or reprovisioned) disk: what is on it is recorded before the first write of the image
    // (below, once the target's index is verified: a refused sync leaves even the state area untouched).
    state = freshState(s);
    fresh = true;
    s.slot = { index: actual, hints, fingerprints: fps };
  }

  let committed: number | null = null;
  let conflict: string | null = null;
  const localChanges = s.state?.state === 'dirty' && s.state.version !== null && scan ? scan.changed.length : 0;
  if (state.state === 'dirty' && scan && localChanges > 0 && s.desktop.mode === 'persistent' && state.version !== null) {
    const c = await commitChanges(s, state, lease!, scan, hints);
    fps = c.fingerprints;
    state = c.state;
    committed = c.outcome.version;
    conflict = c.outcome.conflict?.conflictRef ?? null;
    s.desktop = (await s.client.json<Session['desktop']>('GET', `/api/v1/desktops/${s.desktop.name}`)).body;
    // The ref moved to what the disk now holds (or it is kept aside): the head is asked for again, signed.
    if (!conflict) state = { ...state, floor: committed };
    signed = await signedTarget(s, o, state);
  }

  // The signed head's version, not the unsigned desktop answer's; the index must be the manifest's.
  const to = signed.version;
  const trust = { trustKeys: signed.keys, floor: to };
  const done = (): SyncCore => ({
    desktop: s.desktop.name, image: s.image.name, from, to, committed, conflict, scanned: scan !== null, scanSeconds: scan?.seconds ?? null, localChanges,
    chunksWritten: 0, chunksPatched: 0, tookLeaseFrom: lease?.takenFrom ?? null,
  });
  if (state.state === 'clean' && state.version === to) {
    // A boot with nothing to do; a key the chain brought (a rotation) is recorded all the same.
    if (keysChanged(state, signed.keys) || (state.floor ?? 0) < to) await writeHeader(s.disk.fh, s.disk.size, { ...state, ...trust });
    return sealed(s, done());
  }

  // Delta path: the versions from the disk's version to the target; the target's index then follows
  // from the layers, checked against its id. (A blank disk fetches whole chunks: a root version's
  // delta would be a second copy of the whole image on the server.)
  const hops = state.version === null || state.version === to ? null : await deltaPath(s, state.version, to);
  const base = hops ? s.slot!.index : null;
  // At the target already (a dirty disk, scanned): the slot's index is the target's when it hashes to the signed id.
  const held = state.version === to && !fresh ? s.slot?.index ?? null : null;
  const target = await targetIndex(s, to, hops && base ? { base, hops } : null, signed.manifest.index, held);
  if (sameIndex(actual, target)) {
    if (held && sameIndex(held, target) && s.slot!.hints.equals(hints) && s.slot!.fingerprints?.equals(fps)) {
      // Nothing changed on the disk nor on the server: the slot stands as it is, only the header says clean.
      state = await writeHeader(s.disk.fh, s.disk.size, { ...state, ...trust, state: 'clean', version: to, target: null, failure: null });
      return sealed(s, done());
    }
    state = await writeSlotAndHeader(s.disk.fh, s.disk.size, { ...state, ...trust, state: 'clean', version: to, target: null, failure: null }, { index: target, hints, fingerprints: fps });
    return sealed(s, done());
  }
  if (fresh) state = await writeSlotAndHeader(s.disk.fh, s.disk.size, state, { index: actual, hints, fingerprints: fps });
  const ops = plan({ actual, target, base, deltas: hops !== null });
  state = await writeHeader(s.disk.fh, s.disk.size, { ...state, state: 'applying', target: to, progress: 0 });
  const res = await applyOps(s, state, ops, hops ?? [], hints, fps, o.progress ?? false, o.onProgress);
  await s.disk.fh.datasync();
  state = await writeSlotAndHeader(s.disk.fh, s.disk.size, { ...res.state, ...trust, state: 'clean', version: to, target: null, progress: ops.length, failure: null }, { index: target, hints, fingerprints: fps });
  return sealed(s, { ...done(), chunksWritten: ops.length, chunksPatched: res.patched });
}

/** The disk at its version gets a valid GPT for its size (state-area.ts, the diagram): nothing asks to "fix" it. */
async function sealed(s: Session, r: SyncCore): Promise<SyncCore> {
  await sealGpt(s.disk, GPT_RESERVE);
  return r;
}

interface Hop {
  version: number;
  layerId: string;
  layer: Layer;
  indexId: string;
}

async function deltaPath(s: Session, from: number, to: number): Promise<Hop[] | null> {
  const chain = (await s.client.json<VersionList>('GET', `/api/v1/images/${s.image.name}/versions?ref=${to}&limit=${MAX_HOPS + 1}`)).body.versions;
  const j = chain.findIndex((v) => v.version === from);
  if (j <= 0 || j > MAX_HOPS) return null;
  const hops: Hop[] = [];
  for (const v of chain.slice(0, j).reverse()) {
    const bytes = (await s.client.binary('GET', `/api/v1/images/${s.image.name}/versions/${v.version}/layer`)).body;
    verifyBlob(bytes, v.layer, `layer of version ${v.version}`);
    hops.push({ version: v.version, layerId: v.layer, layer: decodeLayer(bytes), indexId: v.index });
  }
  return hops;
}

/**
 * The target's full index: from the base and the layers when a path exists, else downloaded; either
 * way it must hash to the id its signed manifest names (`signedIndex`).
 */
async function targetIndex(s: Session, to: number, path: { base: ChunkIndex; hops: Hop[] } | null, signedIndex: string, held: ChunkIndex | null = null): Promise<ChunkIndex> {
  if (held && idHex(hashBytes(held.encode())) === signedIndex) return held; // not downloaded again
  let bytes: Buffer;
  let built: ChunkIndex | null = null; // from the layers: returned as it is once its encoding checks (no decoded copy)
  if (path) {
    let idx = path.base;
    for (const h of path.hops) idx = applyLayer(idx, h.layer);
    built = idx;
    bytes = idx.encode();
  } else {
    bytes = (await s.client.binary('GET', `/api/v1/images/${s.image.name}/versions/${to}/index`)).body;
  }
  const got = idHex(hashBytes(bytes));
  if (got !== signedIndex) {
    throw dfError('DF_ERR_SIG_MISMATCH', `the index the server sent for version ${to} hashes to ${got}, not to ${signedIndex} as its signed manifest says: none of its chunks was written`, {
      image: s.image.name, version: to, index: got, signed: signedIndex,
    });
  }
  return built ?? ChunkIndex.decode(bytes);
}

function verifyBlob(bytes: Buffer, id: string, what: string): void {
  const got = idHex(hashBytes(bytes));
  if (got !== id) throw dfError('DF_ERR_CHUNK_INVALID', `${what}: bytes hash to ${got}, not ${id}`, { id, got });
}

/** One hop's delta, read in step with the positions the plan patches. */
class HopCursor {
  private entry = 0;
  private items: AsyncGenerator<DeltaItem> | null = null;

  constructor(private readonly s: Session, private readonly hop: Hop) {}

  /** Apply this hop's change at `pos` (if any) to `buf`, which holds the previous version's chunk. */
  async applyAt(pos: number, buf: Buffer): Promise<void> {
    const entries = this.hop.layer.entries;
    while (this.entry < entries.length && entries[this.entry]!.index < pos) {
      if (!isZeroId(entries[this.entry]!.id)) await this.nextItem(); // blocks for a position we skip
      this.entry++;
    }
    const e = entries[this.entry];
    if (!e || e.index !== pos) return;
    this.entry++;
    if (isZeroId(e.id)) {
      buf.fill(0);
      return;
    }
    const item = await this.nextItem();
    if (item.entry.index !== pos) throw dfError('DF_ERR_DECODE', `delta of version ${this.hop.version} is out of step at chunk ${pos}`);
    patchBlocks(buf, item.mask, item.blocks);
  }

  private async nextItem(): Promise<DeltaItem> {
    this.items ??= readDelta(this.hop.layerId, this.hop.layer, this.s.client.stream('GET', `/api/v1/images/${this.s.image.name}/versions/${this.hop.version}/delta`));
    const r = await this.items.next();
    if (r.done) throw dfError('DF_ERR_DECODE', `delta of version ${this.hop.version} ended early`);
    return r.value;
  }

  async close(): Promise<void> {
    await this.items?.return(undefined);
  }
}


async function applyOps(s: Session, state: DiskState, ops: Op[], hops: Hop[], hints: Buffer, fps: Buffer, showProgress: boolean | 'always', onProgress?: (done: number, total: number) => void): Promise<{ state: DiskState; patched: number }> {
  const g = s.geometry;
  const fetcher = new ChunkFetcher(s.client, ops.filter((op) => op.kind === 'fetch').map((op) => op.id), g.chunkSize);
  const cursors = ops.some((op) => op.kind === 'patch') ? hops.map((h) => new HopCursor(s, h)) : [];
  const progress = Progress.for('sync', ops.length * g.chunkSize, showProgress);
  const hl = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  const out = new DiskWriter(s.disk.fh, false);
  let sinceJournal = 0;
  let patched = 0;
  try {
    for (let k = 0; k < ops.length; k++) {
      const op = ops[k]!;
      const len = chunkLength(g, op.pos);
      let raw: Buffer;
      if (op.kind === 'zero') raw = Buffer.alloc(len);
      else if (op.kind === 'fetch') raw = await fetcher.get(op.id);
      else {
        raw = await readChunkAt(s.disk, op.pos * g.chunkSize, len);
        for (const c of cursors) await c.applyAt(op.pos, raw);
        if (idHex(hashBytes(raw)) === op.id) patched++;
        else raw = await fetcher.fetchOne(op.id); // the disk did not hold what the state said
      }
      await out.chunk(raw, op.pos * g.chunkSize);
      blockHashes(raw, g, hints, op.pos * hl);
      setFingerprint(fps, op.pos, raw);
      progress.add(g.chunkSize);
      onProgress?.(k + 1, ops.length);
      sinceJournal += len;
      if (sinceJournal >= JOURNAL_EVERY) {
        await out.flush();
        await s.disk.fh.datasync();
        state = await writeHeader(s.disk.fh, s.disk.size, { ...state, progress: k + 1 });
        sinceJournal = 0;
      }
    }
    await out.flush();
  } finally {
    for (const c of cursors) await c.close().catch(() => {});
    progress.finish();
  }
  return { state, patched };
}
