import type { FileHandle } from 'node:fs/promises';
import { dfError } from '../errors.js';
import { readAt } from '../fs/read.js';
import { writeFull } from '../fs/write.js';
import { hashBytes, ID_BYTES } from '../chunk/id.js';
import { blakeLib } from '../chunk/native-libs.js';
import { ChunkIndex } from '../image/chunk-index.js';
import { blocksPerChunk, checkGeometry, chunkCount, type Geometry } from '../image/geometry.js';
import { Reader, Writer } from '../wire/bytes.js';
import { BLOCK_HASH_BYTES } from '../sync/blockhash.js';

/**
 * The state area: a reserved region near the end of the endpoint's disk, outside the image. It says
 * what the disk holds, so a boot knows whether to scan, what to commit and what to fetch.
 *
 *   device:  [ image: virtual size bytes | … unused … | slot A | slot B | header 0 | header 1 | GPT reserve: 1 MiB ]
 *                                                      ^ area start                 ^ headers end   backup GPT ^ last LBA
 *
 * The last MiB belongs to the image's GPT (UEFI spec 2.10 §5.3.2: the backup header at the disk's
 * last LBA, its partition entry array just before it). After every sync the agent writes there the
 * backup of the image's GPT for this disk's size and points the primary header (and the protective
 * MBR) at the disk's end (src/disk/gpt.ts, sealGpt in disk.ts; the agent reads those two fields back
 * as the image has them, so they are never a local change). Firmware and the kernel then find a
 * valid GPT and nothing asks the user to "fix" it; a tool that rewrites the backup anyway (sgdisk
 * -e, sfdisk --relocate gpt-bak-std, parted's Fix) writes the last 33 sectors (a 4Kn disk: 5 of
 * 4 KiB), all inside the reserve. The state area sits between the primary header's LastUsableLBA
 * (the image's) and the backup entries: space the spec gives to no partition.
 * A disk with no valid state but data on it is never treated as blank (sync.ts: DF_ERR_DISK_UNKNOWN_DATA).
 *
 *   slot (each S bytes, 4 KiB aligned):
 *            chunk ids of the on-disk version (32 bytes per chunk position, zero = zero chunk)
 *            block hints of the on-disk version (4 bytes per 4 KiB block, see blockhash.ts)
 *   header (4 KiB; two copies, the valid one with the higher sequence wins, so a torn write of
 *   one copy leaves the other):
 *     0    8   magic "DFSTATE1"          8   4   format version (1)
 *     12   8   sequence (u64)            20  8   area start offset
 *     28   8   virtual size              36  4   chunk size
 *     40   1   state: 1 clean 2 dirty 3 applying
 *     41   1   active slot (0 = A, 1 = B)
 *     42   2   reserved
 *     44   4   on-disk version (0 = none: the disk content is not a known version)
 *     48   4   target version (while applying)
 *     52   4   apply progress: chunk positions done (journal; for reporting and resume)
 *     56   4   last conflict version kept by a commit (0 = none)
 *     60   4   reserved
 *     64   32  BLAKE3 of the active slot
 *     96   64  image name (UTF-8, zero padded)     160  64  desktop name
 *     224  32  endpoint secret: an Ed25519 seed made at provisioning (src/endpoint/proof.ts; the server keeps its public key)
 *     256  1   last failure: 0 none, 1 the disk failed (DF_ERR_DISK_IO), 2 the disk was full (DF_ERR_DISK_FULL)
 *     257  7   reserved                   264  8   failure time (ms since 1970)
 *     272  16  failure errno (ASCII, e.g. "EIO")     288  16  failed operation ("write", "fsync", …)
 *     304  160 failure message (UTF-8, zero padded; cut at 160 bytes)
 *     464  8   sealed at (ms since 1970; 0 = unknown): written with a `clean` header; when the disk is a
 *              regular file the run that wrote it sets the file's mtime to it when it closes the disk,
 *              so a later mtime says the file changed since (sealedMtime, src/agent/session.ts)
 *     472  1   trusted version-signing keys: count (0-8; 0 = none recorded yet: the boot stage's are used)
 *     473  3   reserved                   476  4   downgrade floor: the version of the last signed head a
 *              sync brought the disk to, or of its last fast-forward commit (0 = none; src/agent/signed.ts)
 *     480  256 the keys: raw Ed25519 public keys, 32 bytes each (src/sign/; written by a verified sync)
 *     736  …   zero
 *     4064 32  BLAKE3 of bytes 0..4063
 *
 * An update writes the inactive slot, syncs, then writes the older header copy with sequence + 1
 * and syncs: at every instant one complete, checksummed state is on the disk.
 *
 * Fingerprints (the scan's cheap change test, src/sync/scan-core.ts): beside each slot, in the unused
 * space just before the area when the disk has room for it (none: every scan hashes every chunk, as
 * before), a region that is not part of the slot and that no header names:
 *
 *   device:  [ image | … | fingerprints A | fingerprints B | slot A | slot B | headers | GPT reserve ]
 *   region (each R bytes, 4 KiB aligned):
 *     0    8   magic "DFFPRNT1"          8   32  BLAKE3 of the slot these go with (the header's slot hash)
 *     40   4   count (chunk positions)   44  32  BLAKE3 of the fingerprints
 *     4096 …   XXH3-128 of each chunk position's bytes, 16 bytes each (all zero: unknown)
 *
 * A region counts only when its slot hash is the active slot's and its checksum holds, so a torn or
 * stale one costs a full scan, never a wrong id. Its entries are a function of the slot's ids (the
 * XXH3-128 of the bytes whose BLAKE3 is the id), so a region made for an equal slot is as good.
 * Trust: a scan takes a chunk whose XXH3-128 equals its recorded fingerprint to hold the recorded id
 * without hashing it. An accidental change keeps XXH3-128 with probability 2^-128; XXH3 is not
 * collision resistant, so a change crafted to keep it is possible for whoever writes the disk: on a
 * persistent desktop that is its user, whose own change would then miss a commit (the server still
 * verifies every chunk it stores, and a sync still verifies every chunk it patches from the disk).
 * Restore-mode desktops, whose reset must undo whatever the user did, do not use them (sync.ts).
 *
 * Below the fingerprint regions, when there is room, the OS's dm-era metadata (src/agent/era/arm.ts:
 * it ends at or below areaStart − 2 × fingerprintRegionSize); its descriptor and the hook's record
 * take the first 8 KiB of the GPT reserve, which the backup GPT (its last 16.5 KiB) never reaches.
 */
export const HEADER_SIZE = 4096;
/** The disk's last MiB: the backup GPT's (a 128-entry array plus header needs 16.5 KiB; 1 MiB keeps the tools' alignment). */
export const GPT_RESERVE = 1024 * 1024;
const MAGIC = Buffer.from('DFSTATE1');
const ALIGN = 4096;

export type DiskStateKind = 'clean' | 'dirty' | 'applying';
const KIND_CODE: Record<DiskStateKind, number> = { clean: 1, dirty: 2, applying: 3 };
const CODE_KIND = ['', 'clean', 'dirty', 'applying'] as const;

/**
 * Why the last run on this disk stopped, when the disk itself failed it (the other fields still say
 * where the disk is, so a rerun resumes or commits). Cleared when a sync or commit completes.
 */
export interface DiskFailure {
  code: 'DF_ERR_DISK_IO' | 'DF_ERR_DISK_FULL';
  errno: string;
  op: string;
  at: string;
  message: string;
}
const FAILURE_CODES = ['', 'DF_ERR_DISK_IO', 'DF_ERR_DISK_FULL'] as const;

export interface DiskState {
  seq: number;
  areaStart: number;
  geometry: Geometry;
  state: DiskStateKind;
  activeSlot: 0 | 1;
  version: number | null;
  target: number | null;
  progress: number;
  lastConflict: number | null;
  slotHash: Buffer;
  image: string;
  desktop: string;
  secret: Buffer;
  /** Absent or null: the last run did not stop on a disk failure. */
  failure?: DiskFailure | null;
  /** When the header that says `clean` was written (ms since 1970); null: not clean, or unknown. */
  sealedAt?: number | null;
  /** The version-signing keys this disk trusts (absent or empty: none recorded yet). */
  trustKeys?: Buffer[];
  /** The newest version the server's signed word brought this disk to: a sync to an older one needs a signed rollback. */
  floor?: number | null;
}

/** Most keys a header holds (a rotation adds one; the newest are kept). */
export const MAX_TRUST_KEYS = 8;

const align = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

export function slotSize(g: Geometry): number {
  const n = chunkCount(g);
  return align(n * ID_BYTES + n * blocksPerChunk(g) * BLOCK_HASH_BYTES);
}

/** Bytes the state area takes for an image of this geometry. */
export function areaSize(g: Geometry): number {
  return 2 * slotSize(g) + 2 * HEADER_SIZE;
}

/** Where the area starts on a device of `deviceSize`; refuses a device too small before anything is written. */
export function areaStart(g: Geometry, deviceSize: number): number {
  const need = align(g.virtualSize) + areaSize(g) + GPT_RESERVE;
  if (deviceSize < need) {
    throw dfError('DF_ERR_DISK_TOO_SMALL', `the disk has ${deviceSize} bytes; the image needs ${g.virtualSize} plus ${areaSize(g)} for the state area and ${GPT_RESERVE} for the backup GPT (${need} in all)`, {
      deviceSize, need, virtualSize: g.virtualSize, stateArea: areaSize(g), gptReserve: GPT_RESERVE,
    });
  }
  return headersEnd(deviceSize) - 2 * HEADER_SIZE - 2 * slotSize(g);
}

/** Where the two header copies end: before the GPT reserve, 4 KiB aligned. */
export function headersEnd(deviceSize: number): number {
  return Math.floor((deviceSize - GPT_RESERVE) / ALIGN) * ALIGN;
}

/** `s` as a zero-padded field of `n` bytes, cut (on a character boundary) when longer. */
function textField(s: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  let b = Buffer.from(s, 'utf8');
  while (b.length > n) b = Buffer.from(s = s.slice(0, -1), 'utf8');
  b.copy(out);
  return out;
}

function nameField(s: string, field: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > 64) throw dfError('DF_ERR_BAD_REQUEST', `${field} is longer than 64 bytes`, { field });
  const out = Buffer.alloc(64);
  b.copy(out);
  return out;
}

export function encodeHeader(s: DiskState): Buffer {
  const w = new Writer(HEADER_SIZE);
  w.bytes(MAGIC).u32(1).u64(s.seq).u64(s.areaStart).u64(s.geometry.virtualSize).u32(s.geometry.chunkSize)
    .u8(KIND_CODE[s.state]).u8(s.activeSlot).u16(0)
    .u32(s.version ?? 0).u32(s.target ?? 0).u32(s.progress).u32(s.lastConflict ?? 0).u32(0)
    .bytes(s.slotHash).bytes(nameField(s.image, 'image')).bytes(nameField(s.desktop, 'desktop')).bytes(s.secret);
  const f = s.failure;
  if (f) {
    w.u8(FAILURE_CODES.indexOf(f.code)).bytes(Buffer.alloc(7)).u64(Date.parse(f.at))
      .bytes(textField(f.errno, 16)).bytes(textField(f.op, 16)).bytes(textField(f.message, 160));
  }
  w.offset = 464;
  w.u64(s.state === 'clean' ? s.sealedAt ?? 0 : 0);
  const keys = (s.trustKeys ?? []).slice(-MAX_TRUST_KEYS);
  w.u8(keys.length).bytes(Buffer.alloc(3)).u32(s.floor ?? 0);
  for (const k of keys) {
    if (k.length !== 32) throw dfError('DF_ERR_BAD_REQUEST', `a trusted key is 32 bytes, not ${k.length}`);
    w.bytes(k);
  }
  w.offset = HEADER_SIZE - 32;
  w.buf.set(hashBytes(w.buf.subarray(0, HEADER_SIZE - 32)), HEADER_SIZE - 32);
  w.offset = HEADER_SIZE;
  return w.done();
}

/** A header copy, or null when it is blank, torn or not ours. */
export function decodeHeader(buf: Buffer): DiskState | null {
  if (buf.length !== HEADER_SIZE || !buf.subarray(0, 8).equals(MAGIC)) return null;
  if (!hashBytes(buf.subarray(0, HEADER_SIZE - 32)).equals(buf.subarray(HEADER_SIZE - 32))) return null;
  const r = new Reader(buf, 'state header');
  r.bytes(8, 'magic');
  if (r.u32('format version') !== 1) return null;
  const seq = r.u64('sequence');
  const start = r.u64('area start');
  const virtualSize = r.u64('virtual size');
  const chunkSize = r.u32('chunk size');
  const kind = CODE_KIND[r.u8('state')];
  const slot = r.u8('slot');
  r.u16('reserved');
  const version = r.u32('version');
  const target = r.u32('target');
  const progress = r.u32('progress');
  const conflict = r.u32('conflict');
  r.u32('reserved');
  const slotHash = Buffer.from(r.bytes(32, 'slot hash'));
  const str = (b: Buffer) => b.subarray(0, b.indexOf(0) < 0 ? b.length : b.indexOf(0)).toString('utf8');
  const image = str(r.bytes(64, 'image'));
  const desktop = str(r.bytes(64, 'desktop'));
  const secret = Buffer.from(r.bytes(32, 'secret'));
  const fcode = FAILURE_CODES[r.u8('failure')];
  r.bytes(7, 'reserved');
  const fat = r.u64('failure time');
  const failure: DiskFailure | null = fcode
    ? { code: fcode, at: new Date(fat).toISOString(), errno: str(r.bytes(16, 'errno')), op: str(r.bytes(16, 'op')), message: str(r.bytes(160, 'message')) }
    : null;
  const sealedAt = Number(buf.readBigUInt64BE(464));
  const nkeys = Math.min(buf[472]!, MAX_TRUST_KEYS);
  const floor = buf.readUInt32BE(476);
  const trustKeys = Array.from({ length: nkeys }, (_, k) => Buffer.from(buf.subarray(480 + 32 * k, 512 + 32 * k)));
  if (!kind || (slot !== 0 && slot !== 1)) return null;
  return {
    seq, areaStart: start, geometry: { virtualSize, chunkSize }, state: kind, activeSlot: slot, version: version || null,
    target: target || null, progress, lastConflict: conflict || null, slotHash, image, desktop, secret, ...(failure ? { failure } : {}),
    ...(sealedAt && kind === 'clean' ? { sealedAt } : {}), ...(nkeys ? { trustKeys } : {}), ...(floor ? { floor } : {}),
  };
}

export interface Slot {
  index: ChunkIndex;
  /** 4 bytes per block, blocksPerChunk per chunk position. */
  hints: Buffer;
  /** XXH3-128 per chunk position (16 bytes each, all zero = unknown), null or absent: none recorded. */
  fingerprints?: Buffer | null;
}

export const FINGERPRINT_BYTES = 16;
const FP_MAGIC = Buffer.from('DFFPRNT1');
const FP_HEAD = 4096;

export function fingerprintRegionSize(g: Geometry): number {
  return align(FP_HEAD + chunkCount(g) * FINGERPRINT_BYTES);
}

/** Where the fingerprints of slot `which` go, or null when the disk has no room before the area. */
export function fingerprintOffset(s: { areaStart: number; geometry: Geometry }, which: 0 | 1): number | null {
  const at = s.areaStart - (2 - which) * fingerprintRegionSize(s.geometry);
  return at >= align(s.geometry.virtualSize) ? at : null;
}

export function encodeFingerprints(g: Geometry, slotHash: Buffer, fps: Buffer): Buffer {
  const n = chunkCount(g);
  if (fps.length !== n * FINGERPRINT_BYTES) throw dfError('DF_ERR_BAD_REQUEST', `fingerprints: ${fps.length} bytes for ${n} chunk positions`);
  const out = Buffer.alloc(fingerprintRegionSize(g));
  FP_MAGIC.copy(out, 0);
  slotHash.copy(out, 8);
  out.writeUInt32BE(n, 40);
  hashBytes(fps).copy(out, 44);
  fps.copy(out, FP_HEAD);
  return out;
}

/** The fingerprints that go with the active slot, or null (none, stale, torn or no room). */
export async function readFingerprints(fh: FileHandle, s: DiskState): Promise<Buffer | null> {
  const at = fingerprintOffset(s, s.activeSlot);
  if (at === null) return null;
  const g = s.geometry;
  const n = chunkCount(g);
  const head = await readAt(fh, at, 76);
  if (!head.subarray(0, 8).equals(FP_MAGIC) || !head.subarray(8, 40).equals(s.slotHash) || head.readUInt32BE(40) !== n) return null;
  const fps = await readAt(fh, at + FP_HEAD, n * FINGERPRINT_BYTES);
  return hashBytes(fps).equals(head.subarray(44, 76)) ? fps : null;
}

export function encodeSlot(slot: Slot): Buffer {
  const g = slot.index.geometry;
  const out = Buffer.alloc(slotSize(g));
  slot.index.ids.copy(out, 0);
  slot.hints.copy(out, slot.index.ids.length);
  return out;
}

function slotOffset(s: { areaStart: number; geometry: Geometry }, which: 0 | 1): number {
  return s.areaStart + which * slotSize(s.geometry);
}

/** The newer valid header copy of the two that end at `end` (null: none). */
async function readHeadersAt(fh: FileHandle, end: number): Promise<DiskState | null> {
  if (end < 2 * HEADER_SIZE) return null;
  const copies = [await readAt(fh, end - 2 * HEADER_SIZE, HEADER_SIZE), await readAt(fh, end - HEADER_SIZE, HEADER_SIZE)].map(decodeHeader);
  const valid = copies.filter((c): c is DiskState => c !== null).sort((a, b) => b.seq - a.seq);
  return valid[0] ?? null;
}

/** The current state of a disk (null: blank or foreign). */
export async function readState(fh: FileHandle, deviceSize: number): Promise<DiskState | null> {
  return readHeadersAt(fh, headersEnd(deviceSize));
}

/**
 * Disks provisioned before the GPT reserve kept their headers at the very end of the device (where
 * the backup GPT now goes) and their slots just before. Such a state is moved to today's place the
 * first time the agent opens the disk for writing; until then it reads as the disk's state.
 */
export async function readLegacyState(fh: FileHandle, deviceSize: number): Promise<DiskState | null> {
  return (await readState(fh, deviceSize)) ? null : readHeadersAt(fh, deviceSize);
}

/**
 * Moves a legacy state (above) to today's place; null when there is none. Every step leaves one
 * complete, checksummed state on the disk: if the legacy active slot is A, the new slot A would
 * overlap it, so it is first copied to the legacy slot B (a legacy header switch); then the slot is
 * written to the new slot A, synced, and the new header written. A disk with no room for the GPT
 * reserve is refused (DF_ERR_DISK_TOO_SMALL) and keeps its legacy state.
 */
export async function adoptLegacyState(fh: FileHandle, deviceSize: number): Promise<DiskState | null> {
  let old = await readLegacyState(fh, deviceSize);
  if (!old) return null;
  const g = checkGeometry(old.geometry);
  const start = areaStart(g, deviceSize);
  const slot = await readSlot(fh, old);
  if (old.activeSlot === 0 && start + slotSize(g) > old.areaStart) old = await switchSlot(fh, deviceSize, old, slot);
  // Written into slot A (`which` is the inactive one of activeSlot 1), then the header at today's place.
  return writeSlotAndHeader(fh, deviceSize, { ...old, areaStart: start, activeSlot: 1 }, slot);
}

async function switchSlot(fh: FileHandle, headersEndAt: number, s: DiskState, slot: Slot): Promise<DiskState> {
  const which: 0 | 1 = s.activeSlot === 0 ? 1 : 0;
  const bytes = encodeSlot(slot);
  await writeFull(fh, bytes, slotOffset(s, which));
  await fh.datasync();
  return writeHeaderAt(fh, headersEndAt, { ...s, activeSlot: which, slotHash: hashBytes(bytes) });
}

export async function readSlot(fh: FileHandle, s: DiskState): Promise<Slot> {
  const g = checkGeometry(s.geometry);
  const bytes = await readAt(fh, slotOffset(s, s.activeSlot), slotSize(g));
  if (!hashBytes(bytes).equals(s.slotHash)) {
    throw dfError('DF_ERR_STATE_CORRUPT', 'the state area slot does not match its header checksum; rerun with --reprovision', { slot: s.activeSlot });
  }
  const n = chunkCount(g);
  // Views of the one buffer read, not copies: at 32 GiB the slot is 48 MiB, and a copy doubled it.
  const index = ChunkIndex.over(g, bytes.subarray(0, n * ID_BYTES));
  return { index, hints: bytes.subarray(n * ID_BYTES, n * ID_BYTES + n * blocksPerChunk(g) * BLOCK_HASH_BYTES), fingerprints: await readFingerprints(fh, s) };
}

/**
 * encodeSlot(slot) written at `at` without making it (ids, hints, then the zero padding, hashed as they
 * go): a slot is 96 bytes per chunk position, 48 MiB at 32 GiB. Returns the slot's hash.
 */
async function writeSlotAt(fh: FileHandle, at: number, slot: Slot): Promise<Buffer> {
  const g = slot.index.geometry;
  const h = new (blakeLib().Blake3Hasher)();
  const pad = Buffer.alloc(slotSize(g) - slot.index.ids.length - slot.hints.length);
  let o = at;
  for (const part of [slot.index.ids, slot.hints, pad]) {
    h.update(part);
    await writeFull(fh, part, o);
    o += part.length;
  }
  return h.digestBuffer();
}

/** Write a new header (sequence + 1) into the older copy, then sync. */
export async function writeHeader(fh: FileHandle, deviceSize: number, s: DiskState): Promise<DiskState> {
  return writeHeaderAt(fh, headersEnd(deviceSize), s);
}

async function writeHeaderAt(fh: FileHandle, end: number, s: DiskState): Promise<DiskState> {
  const { sealedAt: _old, ...rest } = s;
  const next: DiskState = { ...rest, seq: s.seq + 1, ...(s.state === 'clean' ? { sealedAt: Date.now() } : {}) };
  await writeFull(fh, encodeHeader(next), end - (next.seq % 2 === 0 ? 2 : 1) * HEADER_SIZE);
  await fh.datasync();
  if (next.sealedAt) sealedBy.set(fh, next.sealedAt);
  else sealedBy.delete(fh);
  return next;
}

/** The `sealed at` of the last header written through each handle, when it said `clean`. */
const sealedBy = new WeakMap<FileHandle, number>();

/** When this handle last wrote a `clean` header: the mtime its file gets at close (disk.ts). */
export function sealedThrough(fh: FileHandle): number | undefined {
  return sealedBy.get(fh);
}

/** Write a slot into the inactive position, sync, then switch the header to it. */
export async function writeSlotAndHeader(fh: FileHandle, deviceSize: number, s: DiskState, slot: Slot): Promise<DiskState> {
  const which: 0 | 1 = s.activeSlot === 0 ? 1 : 0;
  const slotHash = await writeSlotAt(fh, slotOffset(s, which), slot);
  const fpAt = slot.fingerprints ? fingerprintOffset(s, which) : null;
  if (fpAt !== null) await writeFull(fh, encodeFingerprints(slot.index.geometry, slotHash, slot.fingerprints!), fpAt);
  await fh.datasync();
  return writeHeader(fh, deviceSize, { ...s, activeSlot: which, slotHash });
}
