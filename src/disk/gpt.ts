import { crc32 } from 'node:zlib';

/**
 * The image's GPT on a disk larger than the image (UEFI spec 2.10 §5.3). The image's own GPT puts
 * its backup at the image's last LBA; firmware, the kernel and partitioning tools want it at the
 * disk's last LBA (and the protective MBR to cover the whole disk), and "correct" the disk when it
 * is not — over whatever lies there. So the disk holds the image's GPT as the disk wants it:
 *
 *   - LBA 0, protective MBR: its 0xEE record's SizeInLBA (and CHS end) say the disk's size (min(D-1, 2^32-1)),
 *   - LBA 1, primary header: AlternateLBA = D-1 (LastUsableLBA stays the image's; CRC recomputed),
 *   - at the disk's end: the backup partition entry array, then the backup header at LBA D-1.
 *
 * Those two fields are the only bytes of the image that differ on the disk, and they are a pure
 * function of the image's bytes and the two sizes: `toImageView` maps them back wherever the agent
 * reads the image region (scan, commit, delta patch), so a sealed disk scans as exactly the
 * version it holds. `toImageView` also undoes what `sgdisk -e` / parted's "Fix" do to LastUsableLBA
 * (they widen it to D-34), so a repair by those tools is not a local change either.
 */
export interface GptView {
  imageSize: number;
  diskSize: number;
  /** Logical sector size of the disk (512 for files). */
  sectorSize: number;
}

const SIGNATURE = Buffer.from('EFI PART');
const MAX_PMBR = 0xffffffff;

interface Header {
  size: number;
  myLba: bigint;
  alternateLba: bigint;
  firstUsable: bigint;
  lastUsable: bigint;
  entriesLba: bigint;
  entries: number;
  entrySize: number;
  entriesCrc: number;
}

function headerCrc(h: Buffer, size: number): number {
  const b = Buffer.from(h.subarray(0, size));
  b.writeUInt32LE(0, 16);
  return crc32(b) >>> 0;
}

/** A header sector's fields, or null when it is not a valid GPT header. */
export function parseHeader(sector: Buffer): Header | null {
  if (sector.length < 92 || !sector.subarray(0, 8).equals(SIGNATURE)) return null;
  const size = sector.readUInt32LE(12);
  if (size < 92 || size > sector.length || headerCrc(sector, size) !== sector.readUInt32LE(16)) return null;
  return {
    size, myLba: sector.readBigUInt64LE(24), alternateLba: sector.readBigUInt64LE(32), firstUsable: sector.readBigUInt64LE(40),
    lastUsable: sector.readBigUInt64LE(48), entriesLba: sector.readBigUInt64LE(72), entries: sector.readUInt32LE(80),
    entrySize: sector.readUInt32LE(84), entriesCrc: sector.readUInt32LE(88),
  };
}

function seal(sector: Buffer, size: number): void {
  sector.writeUInt32LE(headerCrc(sector, size), 16);
}

/** Sectors the partition entry array of `h` takes. */
export const entrySectors = (h: Header, ss: number): number => Math.ceil((h.entries * h.entrySize) / ss);

function sectors(v: GptView): { n: bigint; d: bigint } {
  return { n: BigInt(Math.floor(v.imageSize / v.sectorSize)), d: BigInt(Math.floor(v.diskSize / v.sectorSize)) };
}

/** Apply `fix` to the protective MBR (bytes 0..511) and the LBA 1 header when `buf` (disk bytes from `start`) holds them. */
function edit(buf: Buffer, start: number, ss: number, mbr: (m: Buffer) => void, hdr: (h: Buffer) => void): void {
  if (start === 0 && buf.length >= 512) mbr(buf.subarray(0, 512));
  if (start <= ss && start + buf.length >= 2 * ss) hdr(buf.subarray(ss - start, 2 * ss - start));
}

/** The CHS address partitioning tools give an LBA (255 heads, 63 sectors; past cylinder 1023: FE FF FF). */
function chs(lba: number): Buffer {
  const c = Math.floor(lba / (255 * 63));
  if (c > 1023) return Buffer.from([0xfe, 0xff, 0xff]);
  return Buffer.from([Math.floor(lba / 63) % 255, (lba % 63) + 1 + ((c >> 2) & 0xc0), c & 0xff]);
}

/** The 0xEE record covering `from` sectors after LBA 0 → covering `to` (SizeInLBA and its CHS end address). */
function pmbrSizes(m: Buffer, from: number, to: number): void {
  if (m.readUInt16LE(510) !== 0xaa55 || from === to) return;
  for (let r = 446; r < 510; r += 16) {
    if (m[r + 4] !== 0xee || m.readUInt32LE(r + 8) !== 1 || m.readUInt32LE(r + 12) !== from) continue;
    m.writeUInt32LE(to, r + 12);
    if (m.subarray(r + 5, r + 8).equals(chs(from))) chs(to).copy(m, r + 5);
  }
}

/** Disk bytes → the image's bytes (in place). Bytes that are not a GPT disk's pass unchanged. */
export function toImageView(buf: Buffer, start: number, v: GptView): void {
  const { n, d } = sectors(v);
  if (n >= d) return;
  edit(buf, start, v.sectorSize, (m) => pmbrSizes(m, Math.min(Number(d) - 1, MAX_PMBR), Math.min(Number(n) - 1, MAX_PMBR)), (s) => {
    const h = parseHeader(s);
    if (!h || h.myLba !== 1n || h.alternateLba !== d - 1n) return;
    s.writeBigUInt64LE(n - 1n, 32);
    const cap = n - 2n - BigInt(entrySectors(h, v.sectorSize));
    if (h.lastUsable > cap && cap >= h.firstUsable) s.writeBigUInt64LE(cap, 48);
    seal(s, h.size);
  });
}

/** Image bytes → the disk's bytes (in place): the inverse of `toImageView`. */
export function toDiskView(buf: Buffer, start: number, v: GptView): void {
  const { n, d } = sectors(v);
  if (n >= d) return;
  edit(buf, start, v.sectorSize, (m) => pmbrSizes(m, Math.min(Number(n) - 1, MAX_PMBR), Math.min(Number(d) - 1, MAX_PMBR)), (s) => {
    const h = parseHeader(s);
    if (!h || h.myLba !== 1n || h.alternateLba !== n - 1n) return;
    s.writeBigUInt64LE(d - 1n, 32);
    seal(s, h.size);
  });
}

/**
 * The backup GPT for the disk, from its (disk view) primary header and entry array: the entries at
 * D-1-k..D-2, the header at D-1 with MyLBA and AlternateLBA swapped. Null when `primary` is no
 * GPT header pointing at the disk's end, or its entries do not match their checksum.
 */
export function backupGpt(primary: Buffer, entries: Buffer, v: GptView): { offset: number; bytes: Buffer } | null {
  const h = parseHeader(primary);
  const { d } = sectors(v);
  if (!h || h.myLba !== 1n || h.alternateLba !== d - 1n) return null;
  const k = entrySectors(h, v.sectorSize);
  if (entries.length !== k * v.sectorSize || (crc32(entries.subarray(0, h.entries * h.entrySize)) >>> 0) !== h.entriesCrc) return null;
  const hdr = Buffer.from(primary);
  hdr.writeBigUInt64LE(d - 1n, 24);
  hdr.writeBigUInt64LE(1n, 32);
  hdr.writeBigUInt64LE(d - 1n - BigInt(k), 72);
  seal(hdr, h.size);
  return { offset: (Number(d) - 1 - k) * v.sectorSize, bytes: Buffer.concat([entries, hdr]) };
}
