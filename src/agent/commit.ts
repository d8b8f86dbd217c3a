import type { CommitAnswer, CommitConflict, ErrorBody, Missing, PatchStored, StagedLayer } from '../api/schemas.js';
import { encodeFrame } from '../chunk/frame.js';
import { idHex, isZeroId } from '../chunk/id.js';
import { encodePack, PACK_CONTENT_TYPE, type PackRecord } from '../chunk/pack.js';
import { dfError } from '../errors.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { blocksPerChunk, chunkLength, fullMask, maskBytes } from '../image/geometry.js';
import { diffIndexes, encodeLayer } from '../image/layer.js';
import { extractBlocks, hintMask } from '../sync/blockhash.js';
import { Progress } from '../progress.js';
import { encodePatch, PATCH_CONTENT_TYPE, type PatchRecord } from '../sync/patch.js';
import type { ScanResult } from '../sync/scan.js';
import { readChunkAt, readChunkInto } from './disk.js';
import { hintsAt, type Lease, type Session } from './session.js';
import { writeSlotAndHeader, type DiskState } from './state-area.js';

export interface CommitOutcome {
  version: number;
  parent: number | null;
  conflict: { conflictRef: string; head: number | null; reason: string } | null;
  ref: string;
  chunksChanged: number;
  chunksUploaded: number;
}

const PATCH_BATCH = 16 * 1024 * 1024; // plus one chunk: well under the server's PATCH_RAW_MAX
const WHOLE_BATCH = 8 * 1024 * 1024;

/**
 * Commit the disk's local changes (found by `scan` against the on-disk version) to the desktop:
 * upload what the server lacks as 4 KiB-block patches against the on-disk version's chunks, the
 * layer, then the commit with the lease's fencing token. The state area then says `clean` at the
 * new version — or at the conflict version the server kept, so the next sync moves from there and
 * nothing is lost either way.
 */
export async function commitChanges(s: Session, state: DiskState, lease: Lease, scan: ScanResult, hints: Buffer): Promise<{ outcome: CommitOutcome; state: DiskState; fingerprints: Buffer }> {
  const g = s.geometry;
  const base = s.slot!.index;
  const parent = state.version;
  if (parent === null) throw dfError('DF_ERR_STATE_CORRUPT', 'the disk holds no known version to commit against; sync it first');
  const changed = scan.changed;
  const idsAt = new Map<string, number>();
  for (const pos of changed) if (!scan.index.isZeroAt(pos)) idsAt.set(idHex(scan.index.idAt(pos)), pos);
  const { missing } = (await s.client.json<Missing>('POST', '/api/v1/chunks/missing', { body: { ids: [...idsAt.keys()] }, idempotent: true })).body;

  // Patches: the blocks whose hints changed, against the on-disk version's chunk at that position.
  const mb = maskBytes(g);
  const all = fullMask(g);
  const failedWhole: string[] = [];
  let batch: PatchRecord[] = [];
  let size = 0;
  const send = async () => {
    if (!batch.length) return;
    const r = await s.client.json<PatchStored>('POST', '/api/v1/chunks/patch', { raw: { data: encodePatch(g, batch), type: PATCH_CONTENT_TYPE }, idempotent: true });
    failedWhole.push(...r.body.failed);
    batch = [];
    size = 0;
  };
  // Progress over the changed chunks the server lacks (what is uploaded is their changed blocks).
  const scratch = Buffer.alloc(g.chunkSize); // one read buffer: the blocks sent are copied out of it
  const progress = Progress.for('commit', missing.reduce((n, id) => n + chunkLength(g, idsAt.get(id)!), 0), s.progress);
  for (const id of missing) {
    const pos = idsAt.get(id)!;
    const len = chunkLength(g, pos);
    progress.add(len);
    const raw = await readChunkInto(s.disk, scratch, pos * g.chunkSize, len);
    const baseId = base.idAt(pos);
    const mask = isZeroId(baseId) ? all : hintMask(hintsAt(s.slot!.hints, g, pos), hintsAt(hints, g, pos), blocksPerChunk(g), mb);
    const blocks = extractBlocks(raw, mask);
    batch.push({ id, base: isZeroId(baseId) ? null : idHex(baseId), length: len, mask, blocks });
    size += blocks.length;
    if (size >= PATCH_BATCH) await send();
  }
  await send();
  // A chunk the server could not rebuild (the disk's base was not what the state says, or a hint
  // collided) goes whole.
  // In packs of about 8 MiB: the server takes PACK_MAX_BYTES per body.
  let records: PackRecord[] = [];
  let packBytes = 0;
  const sendPack = async () => {
    if (records.length) await s.client.json('POST', '/api/v1/chunks/pack', { raw: { data: encodePack(records), type: PACK_CONTENT_TYPE }, idempotent: true });
    records = [];
    packBytes = 0;
  };
  for (const id of failedWhole) {
    const pos = idsAt.get(id)!;
    const raw = await readChunkAt(s.disk, pos * g.chunkSize, chunkLength(g, pos));
    const frame = encodeFrame(raw);
    if (packBytes + frame.length > WHOLE_BATCH) await sendPack();
    records.push({ id, rawLength: raw.length, frame });
    packBytes += frame.length;
  }
  await sendPack();
  progress.finish();

  const next = base.clone();
  for (const pos of changed) next.set(pos, scan.index.idAt(pos));
  const layer = encodeLayer(diffIndexes(base, next));
  const staged = (await s.client.json<StagedLayer>('POST', `/api/v1/images/${s.image.name}/layers`, { raw: { data: layer, type: 'application/octet-stream' }, idempotent: true })).body;
  const r = await s.client.json<CommitAnswer | CommitConflict | ErrorBody>(
    'POST', `/api/v1/desktops/${s.desktop.name}/commits`,
    // Retry-safe: the server keys a commit by (ref, parent, layer, kind) and answers a repeat with
    // the version the first one made (src/image/catalog.ts), whichever server the repeat reaches.
    { body: { parent, layer: staged.layer, kind: 'voi-commit', fencing: lease.fencing, holder: lease.holder, ...(s.message ? { message: s.message } : {}) }, accept: [409], idempotent: true },
  );
  // 201 fast-forward, 409 DF_ERR_CONFLICT (kept as a conflict version), or another 409: chunks went missing.
  if (r.status === 409 && (r.body as ErrorBody).code !== 'DF_ERR_CONFLICT') {
    throw dfError('DF_ERR_CHUNKS_MISSING', 'the server lost chunks during the commit; run it again', { ...r.body });
  }
  const answer = r.body as CommitAnswer | CommitConflict;
  const v = answer.version;
  const conflict = 'conflictRef' in answer ? answer : null;
  const outcome: CommitOutcome = {
    version: v.version, parent, ref: answer.ref,
    conflict: conflict ? { conflictRef: conflict.conflictRef, head: conflict.head, reason: conflict.reason } : null,
    chunksChanged: changed.length, chunksUploaded: missing.length,
  };
  const newState = await writeSlotAndHeader(s.disk.fh, s.disk.size, {
    ...state, state: 'clean', version: v.version, target: null, progress: 0, failure: null,
    lastConflict: outcome.conflict ? v.version : state.lastConflict,
  }, { index: next, hints, fingerprints: scan.fingerprints });
  s.slot = { index: next, hints, fingerprints: scan.fingerprints };
  return { outcome, state: newState, fingerprints: scan.fingerprints };
}

/** hints of the disk after a scan: the slot's, with the changed positions' new ones (the slot's own buffer when none changed: no copy). */
export function mergeHints(scan: ScanResult, base: Buffer): Buffer {
  if (scan.hints.size === 0) return base;
  const out = Buffer.from(base);
  for (const [pos, h] of scan.hints) h.copy(out, pos * h.length);
  return out;
}

export function sameIndex(a: ChunkIndex, b: ChunkIndex): boolean {
  return a.ids.equals(b.ids);
}
