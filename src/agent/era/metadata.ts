import { dfError } from '../../errors.js';

/**
 * A reader of Linux dm-era metadata (drivers/md/dm-era-target.c and the persistent-data library it
 * stores through: dm-btree, dm-array, dm-bitset), enough to say which origin blocks were written.
 * Every block is 4 KiB, little-endian, and carries a CRC32C checksum (the kernel's dm_bm_checksum:
 * crc32c seeded with ~0, not inverted, XOR a per-kind constant) over its bytes after the checksum
 * field, plus the block number it was written to; a block failing either check fails the read.
 *
 *   superblock (block 0):
 *     0 csum  4 flags  8 blocknr  16 uuid[16]  32 magic u64 (2126579579)  40 version u32 (1)
 *     44 space map root [128]  172 data block size (sectors)  176 metadata block size (8)
 *     180 nr_blocks  184 current era  188 current writeset {nr_bits u32, root u64}
 *     200 writeset tree root u64   208 era array root u64   216 metadata snap u64
 *   btree node: 0 csum  4 flags (1 internal, 2 leaf)  8 blocknr  16 nr_entries  20 max_entries
 *     24 value_size  28 padding  32 keys u64[max_entries]  then values[max_entries × value_size]
 *     (internal values: child block u64)
 *   array (a btree of one level: array block index → array block location u64); array block:
 *     0 csum  4 max_entries  8 nr_entries  12 value_size  16 blocknr u64  24 values
 *   bitset: an array of u64 words, bit i in word i/64 at bit i%64.
 *
 * What was written: a block is written in era e when it is set in the writeset of era e. The current
 * writeset is in the superblock; writesets of past eras wait in the writeset tree (era → writeset)
 * until the kernel digests them into the era array (block → last era written, 0: never). The kernel
 * rolls the era over at every activation (preresume), so fresh metadata starts at era 1.
 */
export const ERA_BLOCK = 4096;
const SB_MAGIC = 2126579579n;
const SB_XOR = 146538381;
const BTREE_XOR = 121107;
const ARRAY_XOR = 595846735;
const INTERNAL = 1;
const LEAF = 2;

export interface EraSuperblock {
  dataBlockSectors: number;
  nrBlocks: number;
  currentEra: number;
  currentWriteset: { nrBits: number; root: number };
  writesetTreeRoot: number;
  eraArrayRoot: number;
}

/** Reads metadata block `n` (4 KiB); the caller bounds n to its metadata region. */
export type BlockReader = (n: number) => Promise<Buffer>;

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** dm_bm_checksum: CRC32C (Castagnoli) seeded with ~0, without the final inversion, XOR `xor`. */
export function bmChecksum(data: Uint8Array, xor: number): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ((c ^ xor) >>> 0);
}

const bad = (what: string, fields: Record<string, unknown>) => dfError('DF_ERR_ERA_METADATA', `dm-era metadata: ${what}`, fields);

function u64(b: Buffer, at: number): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`a 64-bit field at ${at} is out of range`, { at });
  return Number(v);
}

function checked(b: Buffer, n: number, xor: number, blocknrAt: number, kind: string): Buffer {
  if (b.length !== ERA_BLOCK) throw bad(`${kind} block ${n} is ${b.length} bytes`, { block: n, kind });
  if (bmChecksum(b.subarray(4), xor) !== b.readUInt32LE(0)) throw bad(`${kind} block ${n}: checksum mismatch`, { block: n, kind });
  if (u64(b, blocknrAt) !== n) throw bad(`${kind} block ${n} says it belongs at block ${u64(b, blocknrAt)}`, { block: n, kind });
  return b;
}

export async function readSuperblock(read: BlockReader): Promise<EraSuperblock> {
  const b = await read(0);
  if (b.length !== ERA_BLOCK || b.readBigUInt64LE(32) !== SB_MAGIC) throw bad('no era superblock (magic)', { block: 0 });
  checked(b, 0, SB_XOR, 8, 'superblock');
  if (b.readUInt32LE(40) !== 1) throw bad(`metadata version ${b.readUInt32LE(40)} (1 is read)`, { version: b.readUInt32LE(40) });
  if (b.readUInt32LE(176) !== ERA_BLOCK / 512) throw bad('metadata block size is not 4 KiB', { sectors: b.readUInt32LE(176) });
  return {
    dataBlockSectors: b.readUInt32LE(172), nrBlocks: b.readUInt32LE(180), currentEra: b.readUInt32LE(184),
    currentWriteset: { nrBits: b.readUInt32LE(188), root: u64(b, 192) }, writesetTreeRoot: u64(b, 200), eraArrayRoot: u64(b, 208),
  };
}

/** Every (key, value) of a btree, in key order. Depth and node count are bounded so a loop in a corrupt tree ends. */
async function btreeEntries(read: BlockReader, root: number, valueSize: number, maxNodes: number): Promise<Array<[number, Buffer]>> {
  const out: Array<[number, Buffer]> = [];
  let visited = 0;
  const walk = async (n: number, depth: number): Promise<void> => {
    if (depth > 16 || ++visited > maxNodes) throw bad('btree too deep or too large (a loop?)', { block: n });
    const b = checked(await read(n), n, BTREE_XOR, 8, 'btree node');
    const flags = b.readUInt32LE(4);
    const count = b.readUInt32LE(16);
    const max = b.readUInt32LE(20);
    const vsize = b.readUInt32LE(24);
    const leaf = (flags & LEAF) !== 0;
    if (!leaf && (flags & INTERNAL) === 0) throw bad(`btree node ${n}: flags ${flags}`, { block: n });
    if (vsize !== (leaf ? valueSize : 8) || count > max || 32 + max * (8 + vsize) > ERA_BLOCK) {
      throw bad(`btree node ${n}: ${count}/${max} entries of ${vsize} bytes`, { block: n });
    }
    const values = 32 + max * 8;
    for (let i = 0; i < count; i++) {
      const v = b.subarray(values + i * vsize, values + (i + 1) * vsize);
      if (leaf) out.push([u64(b, 32 + i * 8), Buffer.from(v)]);
      else await walk(u64(v, 0), depth + 1);
    }
  };
  await walk(root, 0);
  return out;
}

/** The values of a dm-array (`valueSize` bytes each), `count` of them. */
async function arrayValues(read: BlockReader, root: number, valueSize: number, count: number, maxNodes: number): Promise<Buffer> {
  const out = Buffer.alloc(count * valueSize);
  const perBlock = Math.floor((ERA_BLOCK - 24) / valueSize);
  let filled = 0;
  for (const [index, loc] of await btreeEntries(read, root, 8, maxNodes)) {
    const n = u64(loc, 0);
    const b = checked(await read(n), n, ARRAY_XOR, 16, 'array block');
    const max = b.readUInt32LE(4);
    const nr = b.readUInt32LE(8);
    if (b.readUInt32LE(12) !== valueSize || max !== perBlock || nr > max) throw bad(`array block ${n}: ${nr}/${max} values of ${b.readUInt32LE(12)} bytes`, { block: n });
    const at = index * perBlock;
    if (at !== filled) throw bad(`array block index ${index} out of order`, { block: n, index });
    const take = Math.min(nr, count - at);
    if (take < 0) throw bad(`array longer than ${count} values`, { block: n });
    b.copy(out, at * valueSize, 24, 24 + take * valueSize);
    filled = at + nr;
  }
  if (filled < count) throw bad(`array holds ${filled} values, ${count} expected`, { filled, count });
  return out;
}

/** Set `out[b] = 1` for every bit b set in the bitset at `root` (nrBits bits). */
async function markBitset(read: BlockReader, root: number, nrBits: number, out: Uint8Array, maxNodes: number): Promise<void> {
  const words = await arrayValues(read, root, 8, Math.ceil(nrBits / 64), maxNodes);
  const n = Math.min(nrBits, out.length);
  for (let w = 0; w * 64 < n; w++) {
    const lo = words.readUInt32LE(w * 8);
    const hi = words.readUInt32LE(w * 8 + 4);
    if (!lo && !hi) continue;
    for (let k = 0; k < 64 && w * 64 + k < n; k++) if ((k < 32 ? lo >>> k : hi >>> (k - 32)) & 1) out[w * 64 + k] = 1;
  }
}

export interface EraWritten {
  superblock: EraSuperblock;
  /** One byte per origin block: 1 = written in an era ≥ `sinceEra`. */
  written: Uint8Array;
}

/**
 * Which origin blocks were written in era `sinceEra` or later: the era array, every writeset still
 * in the tree, and the current one. `metadataBlocks` bounds every block number read.
 */
export async function readWritten(readBlock: BlockReader, metadataBlocks: number, sinceEra = 1): Promise<EraWritten> {
  const read: BlockReader = async (n) => {
    if (!Number.isInteger(n) || n < 0 || n >= metadataBlocks) throw bad(`block ${n} is outside the ${metadataBlocks}-block metadata device`, { block: n });
    return readBlock(n);
  };
  const sb = await readSuperblock(read);
  const nr = sb.nrBlocks;
  const written = new Uint8Array(nr);
  const maxNodes = metadataBlocks;
  const eras = await arrayValues(read, sb.eraArrayRoot, 4, nr, maxNodes);
  for (let b = 0; b < nr; b++) if (eras.readUInt32LE(b * 4) >= sinceEra) written[b] = 1;
  for (const [era, ws] of await btreeEntries(read, sb.writesetTreeRoot, 12, maxNodes)) {
    if (era >= sinceEra) await markBitset(read, u64(ws, 4), ws.readUInt32LE(0), written, maxNodes);
  }
  // Root 0 (the superblock's location) is the kernel's "no writeset": archived, or none yet.
  if (sb.currentWriteset.root !== 0 && sb.currentEra >= sinceEra) await markBitset(read, sb.currentWriteset.root, sb.currentWriteset.nrBits, written, maxNodes);
  return { superblock: sb, written };
}
