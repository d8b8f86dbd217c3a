import { randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { hashBytes } from '../../chunk/id.js';
import { dfError } from '../../errors.js';
import { readAt } from '../../fs/read.js';
import { writeFull } from '../../fs/write.js';
import { chunkCount, type Geometry } from '../../image/geometry.js';
import { parseHeader } from '../../disk/gpt.js';
import { fingerprintRegionSize, headersEnd, type DiskState } from '../state-area.js';
import { ERA_BLOCK, readWritten } from './metadata.js';

/**
 * Changed-block tracking by the desktop OS (initramfs/os-integration/dm-era/): its initramfs puts a
 * dm-era target over its root partition, with the era metadata in a space of this disk that no
 * partition, no fingerprint region and no state-area structure uses, so a commit reads only what
 * the OS wrote instead of the whole disk. Nothing is trusted that the agent cannot check:
 *
 *   device: [ image | … | era metadata | fingerprints A | fingerprints B | slots | headers | reserve: descriptor, hook record, … backup GPT ]
 *                        ^ eraSpace: ends at or below areaStart − 2 × fingerprintRegionSize (checked, eraSpace)
 *
 * The descriptor (4 KiB at headersEnd, the first bytes of the GPT reserve, which the backup GPT
 * never reaches: it takes the reserve's last 16.5 KiB) is written by the agent at a hand-off from a
 * clean disk ("arming"); little-endian, so the hook reads it with od:
 *     0  8  magic "DFERA001"      8  16 token (random per arming)
 *     24 8  metadata offset       32 8  metadata length     40 4  era block (sectors)   44 4  partitions (≤ 8)
 *     48 32 slot hash armed at    80 4  version armed at
 *     128 + 32 i: partition i: 0 8 start, 8 8 length (bytes), 16 4 its ext4 mount count at arming
 *     4064 32 BLAKE3 of bytes 0..4063
 * The hook record (the next 4 KiB) is the hook's: at each boot it tracks, it writes
 *     0 8 magic "DFERAHK1"   8 16 the descriptor's token   24 4 tracked boots   28 4 the ext4 mount
 *     count it saw before this boot's mount   32 4 the partition index   36 4 broken (1: it found a boot it did not track)
 *
 * Trust (changedPositions): the descriptor is intact and armed at the slot the state names; the hook
 * record carries its token, is not broken, counts ≥ 1 boot; the era metadata is intact, its block size
 * and block count are the ones armed, its era ≥ the boots (the kernel starts a new era at every
 * activation); and the partition's ext4 mount count is exactly the armed one plus the tracked boots:
 * a boot without the hook (another initramfs, a rescue system) mounts the file system too, so it
 * shows as one mount too many, here or at the hook's next boot, and the agent scans everything.
 * Chunks outside the tracked partition, and the partition's first 64 KiB (its superblock, which
 * tune2fs and e2label write through the raw device), are read every time.
 */
export const DESC_MAGIC = Buffer.from('DFERA001');
export const HOOK_MAGIC = Buffer.from('DFERAHK1');
export const DESC_SIZE = 4096;
const MAX_PARTS = 8;
const MIB = 1024 * 1024;
const EXT4_MAGIC = 0xef53;

export interface Partition { start: number; length: number; mounts: number }
export interface Descriptor {
  token: Buffer;
  metaStart: number;
  metaLength: number;
  eraBlockSectors: number;
  slotHash: Buffer;
  version: number;
  partitions: Partition[];
}
export interface HookRecord { token: Buffer; boots: number; lastMounts: number; partition: number; broken: boolean }

/** The era block: one chunk, so an era block maps to whole chunks when the partition is chunk-aligned. */
export const eraBlockBytes = (g: Geometry): number => g.chunkSize;

/** Metadata room for an origin of `bytes`: the era array twice (copy-on-write), writesets, space maps. */
export function eraMetadataBytes(g: Geometry, bytes = g.virtualSize): number {
  const blocks = Math.ceil(bytes / eraBlockBytes(g));
  const array = Math.ceil((blocks * 4) / (ERA_BLOCK - 24)) * ERA_BLOCK;
  const bitset = Math.ceil(blocks / 8 / (ERA_BLOCK - 24)) * ERA_BLOCK;
  return Math.ceil((2 * array + 8 * bitset + MIB) / MIB) * MIB;
}

/**
 * Where the era metadata goes: just below the fingerprint regions, or null when the disk has no room
 * between the image and them. Its end never passes areaStart − 2 × fingerprintRegionSize.
 */
export function eraSpace(s: { areaStart: number; geometry: Geometry }): { start: number; length: number } | null {
  const g = s.geometry;
  const end = Math.floor((s.areaStart - 2 * fingerprintRegionSize(g)) / MIB) * MIB;
  const length = eraMetadataBytes(g);
  const start = end - length;
  const imageEnd = Math.ceil(g.virtualSize / 4096) * 4096;
  if (start < imageEnd) return null;
  const fpStart = s.areaStart - 2 * fingerprintRegionSize(g);
  if (end > fpStart) throw dfError('DF_ERR_INTERNAL', 'the era space would overlap the fingerprint regions', { end, fingerprints: fpStart });
  return { start, length };
}

export function encodeDescriptor(d: Descriptor): Buffer {
  const b = Buffer.alloc(DESC_SIZE);
  DESC_MAGIC.copy(b, 0);
  d.token.copy(b, 8);
  b.writeBigUInt64LE(BigInt(d.metaStart), 24);
  b.writeBigUInt64LE(BigInt(d.metaLength), 32);
  b.writeUInt32LE(d.eraBlockSectors, 40);
  const parts = d.partitions.slice(0, MAX_PARTS);
  b.writeUInt32LE(parts.length, 44);
  d.slotHash.copy(b, 48);
  b.writeUInt32LE(d.version, 80);
  parts.forEach((p, i) => {
    b.writeBigUInt64LE(BigInt(p.start), 128 + 32 * i);
    b.writeBigUInt64LE(BigInt(p.length), 136 + 32 * i);
    b.writeUInt32LE(p.mounts, 144 + 32 * i);
  });
  hashBytes(b.subarray(0, DESC_SIZE - 32)).copy(b, DESC_SIZE - 32);
  return b;
}

export function decodeDescriptor(b: Buffer): Descriptor | null {
  if (b.length !== DESC_SIZE || !b.subarray(0, 8).equals(DESC_MAGIC)) return null;
  if (!hashBytes(b.subarray(0, DESC_SIZE - 32)).equals(b.subarray(DESC_SIZE - 32))) return null;
  const n = b.readUInt32LE(44);
  if (n > MAX_PARTS) return null;
  return {
    token: Buffer.from(b.subarray(8, 24)), metaStart: Number(b.readBigUInt64LE(24)), metaLength: Number(b.readBigUInt64LE(32)),
    eraBlockSectors: b.readUInt32LE(40), slotHash: Buffer.from(b.subarray(48, 80)), version: b.readUInt32LE(80),
    partitions: Array.from({ length: n }, (_, i) => ({
      start: Number(b.readBigUInt64LE(128 + 32 * i)), length: Number(b.readBigUInt64LE(136 + 32 * i)), mounts: b.readUInt32LE(144 + 32 * i),
    })),
  };
}

export function decodeHookRecord(b: Buffer): HookRecord | null {
  if (b.length < 40 || !b.subarray(0, 8).equals(HOOK_MAGIC)) return null;
  return { token: Buffer.from(b.subarray(8, 24)), boots: b.readUInt32LE(24), lastMounts: b.readUInt32LE(28), partition: b.readUInt32LE(32), broken: b.readUInt32LE(36) !== 0 };
}

/** The hook's record as the hook writes it (tests stand in for a boot with it). */
export function encodeHookRecord(r: HookRecord): Buffer {
  const b = Buffer.alloc(DESC_SIZE);
  HOOK_MAGIC.copy(b, 0);
  r.token.copy(b, 8);
  b.writeUInt32LE(r.boots, 24);
  b.writeUInt32LE(r.lastMounts, 28);
  b.writeUInt32LE(r.partition, 32);
  b.writeUInt32LE(r.broken ? 1 : 0, 36);
  return b;
}

/** The image's partitions (MBR primaries, or GPT entries behind a protective MBR) that lie inside it. */
export async function partitions(fh: FileHandle, g: Geometry, sectorSize: number): Promise<Array<{ start: number; length: number }>> {
  const mbr = await readAt(fh, 0, 512);
  if (mbr.readUInt16LE(510) !== 0xaa55) return [];
  const out: Array<{ start: number; length: number }> = [];
  const types = [0, 1, 2, 3].map((i) => mbr[446 + 16 * i + 4]!);
  if (types.includes(0xee)) {
    const h = parseHeader(await readAt(fh, sectorSize, sectorSize));
    if (!h || h.entrySize < 128 || h.entries > 1024) return [];
    const arr = await readAt(fh, Number(h.entriesLba) * sectorSize, h.entries * h.entrySize);
    for (let i = 0; i < h.entries; i++) {
      const e = arr.subarray(i * h.entrySize, (i + 1) * h.entrySize);
      if (e.subarray(0, 16).every((x) => x === 0)) continue;
      const first = Number(e.readBigUInt64LE(32));
      const last = Number(e.readBigUInt64LE(40));
      if (last >= first) out.push({ start: first * sectorSize, length: (last - first + 1) * sectorSize });
    }
  } else {
    for (let i = 0; i < 4; i++) {
      const t = types[i]!;
      if (t === 0 || t === 0x05 || t === 0x0f || t === 0x85) continue; // empty or extended
      out.push({ start: mbr.readUInt32LE(446 + 16 * i + 8) * 512, length: mbr.readUInt32LE(446 + 16 * i + 12) * 512 });
    }
  }
  return out.filter((p) => p.length > 0 && p.start + p.length <= g.virtualSize);
}

/** An ext4 (ext2/3) file system's mount count at `start`, or null when none is there. */
async function ext4Mounts(fh: FileHandle, start: number): Promise<number | null> {
  const sb = await readAt(fh, start + 1024, 1024);
  return sb.readUInt16LE(0x38) === EXT4_MAGIC ? sb.readUInt16LE(0x34) : null;
}

/**
 * Arm tracking for the OS run about to start from a disk that holds exactly its slot (a hand-off
 * from a clean disk): fresh era metadata (its superblock zeroed, so the kernel formats it), a new
 * token, the hook record cleared. Returns false (and disarms) when there is no room or no ext4 partition.
 */
export async function armTracking(fh: FileHandle, deviceSize: number, s: DiskState, sectorSize: number): Promise<boolean> {
  const space = eraSpace(s);
  const parts: Partition[] = [];
  if (space && s.version !== null) {
    for (const p of await partitions(fh, s.geometry, sectorSize)) {
      const mounts = await ext4Mounts(fh, p.start);
      if (mounts !== null) parts.push({ ...p, mounts });
    }
  }
  if (!space || !parts.length) {
    await disarmTracking(fh, deviceSize);
    return false;
  }
  const at = headersEnd(deviceSize);
  // The old arming goes first: no instant holds a descriptor next to metadata it did not arm.
  await disarmTracking(fh, deviceSize);
  await writeFull(fh, Buffer.alloc(ERA_BLOCK), space.start);
  await fh.datasync();
  const d: Descriptor = {
    token: randomBytes(16), metaStart: space.start, metaLength: space.length, eraBlockSectors: eraBlockBytes(s.geometry) / 512,
    slotHash: s.slotHash, version: s.version!, partitions: parts.slice(0, MAX_PARTS),
  };
  await writeFull(fh, encodeDescriptor(d), at);
  await fh.datasync();
  return true;
}

/** No tracking: the descriptor and the hook record zeroed. */
export async function disarmTracking(fh: FileHandle, deviceSize: number): Promise<void> {
  const at = headersEnd(deviceSize);
  const old = await readAt(fh, at, 2 * DESC_SIZE);
  if (old.every((x) => x === 0)) return;
  await writeFull(fh, Buffer.alloc(2 * DESC_SIZE), at);
  await fh.datasync();
}

export type Tracked = { read: Uint8Array; tracked: { start: number; length: number }; boots: number; era: number } | { read: null; reason: string };

/**
 * The chunk positions a scan must read (1) when the OS's tracking can be trusted for the disk in
 * state `s` (see the header comment), or the reason it cannot.
 */
export async function changedPositions(fh: FileHandle, deviceSize: number, s: DiskState): Promise<Tracked> {
  const no = (reason: string): Tracked => ({ read: null, reason });
  const g = s.geometry;
  if (s.state !== 'dirty' || s.version === null) return no(`the disk is ${s.state}`);
  const at = headersEnd(deviceSize);
  const d = decodeDescriptor(await readAt(fh, at, DESC_SIZE));
  if (!d) return no('not armed');
  if (!d.slotHash.equals(s.slotHash) || d.version !== s.version) return no('armed for another version of the disk');
  const space = eraSpace(s);
  if (!space || d.metaStart !== space.start || d.metaLength !== space.length || d.eraBlockSectors * 512 !== eraBlockBytes(g)) return no('armed with another layout');
  const h = decodeHookRecord(await readAt(fh, at + DESC_SIZE, DESC_SIZE));
  if (!h || !h.token.equals(d.token)) return no('the hook never tracked this arming');
  if (h.broken) return no('the hook found a boot it did not track');
  const p = d.partitions[h.partition];
  if (h.boots < 1 || !p) return no('the hook record is inconsistent');
  const mounts = await ext4Mounts(fh, p.start);
  if (mounts === null) return no('the tracked partition holds no ext4 file system');
  if (h.lastMounts !== ((p.mounts + h.boots - 1) & 0xffff) || mounts !== ((p.mounts + h.boots) & 0xffff)) return no(`the file system was mounted ${mounts - p.mounts} times in ${h.boots} tracked boots`);
  const eb = eraBlockBytes(g);
  let era;
  try {
    era = await readWritten(async (n) => readAt(fh, d.metaStart + n * ERA_BLOCK, ERA_BLOCK), Math.floor(d.metaLength / ERA_BLOCK), 1);
  } catch (err) {
    return no(`era metadata: ${(err as Error).message}`);
  }
  const sb = era.superblock;
  if (sb.dataBlockSectors * 512 !== eb || sb.nrBlocks !== Math.ceil(p.length / eb)) return no('the era metadata tracks another device');
  if (sb.currentEra < h.boots) return no(`era ${sb.currentEra} is older than the ${h.boots} tracked boots`);
  const n = chunkCount(g);
  const read = new Uint8Array(n);
  const mark = (from: number, to: number) => { // bytes [from, to)
    for (let pos = Math.floor(from / g.chunkSize); pos < n && pos * g.chunkSize < to; pos++) read[pos] = 1;
  };
  mark(0, p.start);
  mark(p.start + p.length, g.virtualSize);
  mark(p.start, p.start + 64 * 1024);
  for (let b = 0; b < era.written.length; b++) if (era.written[b]) mark(p.start + b * eb, p.start + (b + 1) * eb);
  return { read, tracked: { start: p.start, length: p.length }, boots: h.boots, era: sb.currentEra };
}
