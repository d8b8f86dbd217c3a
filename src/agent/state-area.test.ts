import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hashBytes } from '../chunk/id.js';
import { DeskfuseError } from '../errors.js';
import { ChunkIndex } from '../image/chunk-index.js';
import type { Geometry } from '../image/geometry.js';
import {
  areaSize, areaStart, decodeHeader, encodeHeader, encodeSlot, fingerprintOffset, fingerprintRegionSize, GPT_RESERVE, HEADER_SIZE, headersEnd, readSlot, readState, slotSize,
  writeHeader, writeSlotAndHeader,
  type DiskState, type Slot,
} from './state-area.js';
import { prng, rejection, thrown } from '../../test/helpers/expect.js';

const rnd = prng(0x57a7e);
/** Seeded bytes, 4 per PRNG draw. */
const randomBytes = (n: number) => {
  const b = Buffer.alloc(n + 3);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  return b.subarray(0, n);
};

/** 1 MiB in 64 KiB chunks: 16 chunks of 16 blocks → a slot of 16×32 + 256×4 = 1,536 bytes → 4 KiB. */
const G: Geometry = { virtualSize: 1 << 20, chunkSize: 65536 };

const STATE: DiskState = {
  seq: 5,
  areaStart: 1 << 20,
  geometry: G,
  state: 'applying',
  activeSlot: 1,
  version: 7,
  target: 8,
  progress: 3,
  lastConflict: 6,
  slotHash: Buffer.alloc(32, 0xee),
  image: 'win11',
  desktop: 'lab-01',
  secret: Buffer.alloc(32, 0x5e),
};
// Written by hand from the diagram in state-area.ts: bytes 0..255 of the header.
const GOLDEN_HEX =
  '4446535441544531' + //       0  magic "DFSTATE1"
  '00000001' + //                 8  format version 1
  '0000000000000005' + //        12  sequence 5
  '0000000000100000' + //        20  area start 1 MiB
  '0000000000100000' + //        28  virtual size 1 MiB
  '00010000' + //                36  chunk size 64 KiB
  '03' + //                      40  state: applying
  '01' + //                      41  active slot B
  '0000' + //                    42  reserved
  '00000007' + //                44  on-disk version 7
  '00000008' + //                48  target version 8
  '00000003' + //                52  progress: 3 positions done
  '00000006' + //                56  last conflict version 6
  '00000000' + //                60  reserved
  'ee'.repeat(32) + //           64  BLAKE3 of the active slot
  '77696e3131' + '00'.repeat(59) + //   96  image "win11"
  '6c61622d3031' + '00'.repeat(58) + // 160  desktop "lab-01"
  '5e'.repeat(32); //           224  endpoint secret

/** Recompute a header's checksum after editing it. */
function reseal(h: Buffer): Buffer {
  hashBytes(h.subarray(0, HEADER_SIZE - 32)).copy(h, HEADER_SIZE - 32);
  return h;
}

describe('state header', () => {
  it('encodes the fields at the offsets of the diagram, zeros up to 4064, then the BLAKE3 of bytes 0..4063', () => {
    const h = encodeHeader(STATE);
    expect(h.length).toBe(HEADER_SIZE);
    expect(h.subarray(0, 256).toString('hex')).toBe(GOLDEN_HEX);
    expect(h.subarray(256, 4064).equals(Buffer.alloc(4064 - 256))).toBe(true);
    expect(h.subarray(4064)).toEqual(hashBytes(h.subarray(0, 4064)));
  });

  it('decodes what it encodes; absent versions are 0 on disk and null in memory', () => {
    expect(decodeHeader(encodeHeader(STATE))).toEqual(STATE);
    const none: DiskState = { ...STATE, state: 'clean', activeSlot: 0, version: null, target: null, lastConflict: null, image: '', desktop: '' };
    const h = encodeHeader(none);
    expect(h.readUInt32BE(44) + h.readUInt32BE(48) + h.readUInt32BE(56)).toBe(0);
    expect(decodeHeader(h)).toEqual(none);
    expect(decodeHeader(encodeHeader({ ...STATE, state: 'dirty' }))?.state).toBe('dirty');
  });

  it("'sealed at' sits at 464 on a clean header only, and round-trips", () => {
    const at = Date.parse('2026-12-07T16:00:00.123Z');
    const clean = encodeHeader({ ...STATE, state: 'clean', sealedAt: at });
    expect(Number(clean.readBigUInt64BE(464))).toBe(at);
    expect(clean.subarray(472, 4064).equals(Buffer.alloc(4064 - 472))).toBe(true);
    expect(decodeHeader(clean)).toEqual({ ...STATE, state: 'clean', sealedAt: at });
    const dirty = encodeHeader({ ...STATE, state: 'dirty', sealedAt: at });
    expect(dirty.readBigUInt64BE(464)).toBe(0n);
    expect(decodeHeader(dirty)).not.toHaveProperty('sealedAt');
  });

  it('trusted keys (count at 472, keys from 480) and the version floor (476) round-trip; the newest 8 are kept', () => {
    const keys = Array.from({ length: 10 }, (_, i) => Buffer.alloc(32, i + 1));
    const h = encodeHeader({ ...STATE, trustKeys: keys, floor: 7 });
    expect(h[472]).toBe(8);
    expect(h.readUInt32BE(476)).toBe(7);
    expect(h.subarray(480, 512).equals(keys[2]!)).toBe(true);
    expect(h.subarray(736, 4064).equals(Buffer.alloc(4064 - 736))).toBe(true);
    expect(decodeHeader(h)).toEqual({ ...STATE, trustKeys: keys.slice(2), floor: 7 });
    expect(() => encodeHeader({ ...STATE, trustKeys: [Buffer.alloc(31)] })).toThrow(/32 bytes/);
  });

  it('names of exactly 64 bytes fill their field; longer ones are refused', () => {
    const name = 'é'.repeat(32); // 64 bytes of UTF-8
    expect(decodeHeader(encodeHeader({ ...STATE, image: name, desktop: name }))).toMatchObject({ image: name, desktop: name });
    const err = thrown(() => encodeHeader({ ...STATE, desktop: 'd'.repeat(65) }));
    expect(err.code).toBe('DF_ERR_BAD_REQUEST');
    expect(err.fields).toEqual({ field: 'desktop' });
  });

  it('a torn copy (any byte changed, the checksum included) decodes to null', () => {
    const good = encodeHeader(STATE);
    for (let i = 0; i < HEADER_SIZE; i += i < 300 || i > 4000 ? 1 : 37) {
      const h = Buffer.from(good);
      h[i] = h[i]! ^ 0x01;
      expect(decodeHeader(h)).toBeNull();
    }
    // A write torn at a sector boundary: new first sector, old rest.
    const older = encodeHeader({ ...STATE, seq: 4, progress: 2 });
    expect(decodeHeader(Buffer.concat([good.subarray(0, 512), older.subarray(512)]))).toBeNull();
  });

  it.each([
    ['blank', () => Buffer.alloc(HEADER_SIZE)],
    ['too short', () => encodeHeader(STATE).subarray(0, HEADER_SIZE - 1)],
    ['another magic', () => reseal(Buffer.from(encodeHeader(STATE)).fill('DFSTATE2', 0, 8))],
    ['format version 2', () => { const h = Buffer.from(encodeHeader(STATE)); h.writeUInt32BE(2, 8); return reseal(h); }],
    ['state code 0', () => { const h = Buffer.from(encodeHeader(STATE)); h[40] = 0; return reseal(h); }],
    ['state code 4', () => { const h = Buffer.from(encodeHeader(STATE)); h[40] = 4; return reseal(h); }],
    ['active slot 2', () => { const h = Buffer.from(encodeHeader(STATE)); h[41] = 2; return reseal(h); }],
  ])('not ours, null: %s', (_name, make) => {
    expect(decodeHeader(make())).toBeNull();
  });
});

describe('area placement', () => {
  it('slot and area sizes follow the geometry, 4 KiB aligned', () => {
    expect(slotSize(G)).toBe(4096);
    expect(areaSize(G)).toBe(2 * 4096 + 2 * HEADER_SIZE);
    // 64 GiB in 64 KiB chunks: 2^20 positions × (32 + 16×4) bytes = 96 MiB per slot.
    expect(slotSize({ virtualSize: 2 ** 36, chunkSize: 65536 })).toBe(96 * 2 ** 20);
    // A short last chunk still gets its id and all its block hints: 17 × 32 + 17 × 64 = 1,632 → 4 KiB.
    expect(slotSize({ virtualSize: (1 << 20) + 512, chunkSize: 65536 })).toBe(4096);
  });

  it('refuses a device too small for the image plus the area and the GPT reserve with DF_ERR_DISK_TOO_SMALL', () => {
    const need = (1 << 20) + areaSize(G) + GPT_RESERVE;
    for (const size of [0, 4096, 1 << 20, need - 512]) {
      const err = thrown(() => areaStart(G, size));
      expect(err.code).toBe('DF_ERR_DISK_TOO_SMALL');
      expect(err.fields).toEqual({ deviceSize: size, need, virtualSize: 1 << 20, stateArea: areaSize(G), gptReserve: GPT_RESERVE });
    }
    expect(areaStart(G, need)).toBe(1 << 20);
  });

  it('the image is rounded up to 4 KiB before the area', () => {
    const g: Geometry = { virtualSize: (1 << 20) + 512, chunkSize: 65536 };
    const need = (1 << 20) + 4096 + areaSize(g) + GPT_RESERVE;
    expect(thrown(() => areaStart(g, need - 512)).code).toBe('DF_ERR_DISK_TOO_SMALL');
    expect(areaStart(g, need)).toBe((1 << 20) + 4096);
  });

  it('on larger and unaligned devices the area is aligned, after the image, the headers after the slots, and the last MiB left to the backup GPT', () => {
    for (const size of [(1 << 20) + areaSize(G) + GPT_RESERVE + 512, 10 << 20, (10 << 20) + 512, (10 << 20) + 3584, 2 ** 40 + 512]) {
      const start = areaStart(G, size);
      const end = headersEnd(size);
      expect(start % 4096).toBe(0);
      expect(end % 4096).toBe(0);
      expect(start).toBeGreaterThanOrEqual(1 << 20);
      expect(start + 2 * slotSize(G) + 2 * HEADER_SIZE).toBe(end);
      expect(end).toBeLessThanOrEqual(size - GPT_RESERVE);
      expect(size - GPT_RESERVE - end).toBeLessThan(4096);
    }
  });
});

describe('state on a disk file', () => {
  let dir: string;
  let file: string;
  let fh: FileHandle;
  const SIZE = (1 << 20) + (64 << 10) + GPT_RESERVE + 512; // unaligned on purpose
  const h0 = headersEnd(SIZE) - 2 * HEADER_SIZE;
  const h1 = headersEnd(SIZE) - HEADER_SIZE;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-state-'));
    file = path.join(dir, 'disk.img');
    await fsp.writeFile(file, '');
    await fsp.truncate(file, SIZE);
    fh = await fsp.open(file, 'r+');
  });

  afterEach(async () => {
    await fh.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const initial = (): DiskState => ({
    seq: 0, areaStart: areaStart(G, SIZE), geometry: G, state: 'clean', activeSlot: 0, version: 1, target: null, progress: 0,
    lastConflict: null, slotHash: Buffer.alloc(32), image: 'img', desktop: 'desk', secret: randomBytes(32),
  });

  function randomSlot(): Slot {
    const index = ChunkIndex.empty(G);
    for (let i = 0; i < index.count; i++) if (rnd() < 0.6) index.set(i, randomBytes(32));
    return { index, hints: randomBytes(index.count * 16 * 4) };
  }

  const at = async (pos: number, len: number) => {
    const b = Buffer.alloc(len);
    await fh.read(b, 0, len, pos);
    return b;
  };
  const put = (pos: number, data: Buffer) => fh.write(data, 0, data.length, pos);
  const sameSlot = (a: Slot, b: Slot) => a.index.ids.equals(b.index.ids) && a.hints.equals(b.hints);

  it('a blank disk, or one smaller than the two headers, has no state', async () => {
    expect(await readState(fh, SIZE)).toBeNull();
    expect(await readState(fh, GPT_RESERVE + 2 * HEADER_SIZE - 512)).toBeNull();
  });

  it('writeSlotAndHeader then readState/readSlot round-trip, alternating slots and header copies', async () => {
    const s0 = initial();
    const slot1 = randomSlot();
    const s1 = await writeSlotAndHeader(fh, SIZE, s0, slot1);
    expect(s1).toMatchObject({ seq: 1, activeSlot: 1 });
    expect(s1.slotHash).toEqual(hashBytes(encodeSlot(slot1)));
    expect(await readState(fh, SIZE)).toEqual(s1);
    expect(sameSlot(await readSlot(fh, s1), slot1)).toBe(true);
    // Slot B holds the slot; sequence 1 went to the second header copy, the first is untouched.
    expect((await at(s0.areaStart + slotSize(G), slotSize(G))).equals(encodeSlot(slot1))).toBe(true);
    expect(decodeHeader(await at(h1, HEADER_SIZE))?.seq).toBe(1);
    expect((await at(h0, HEADER_SIZE)).equals(Buffer.alloc(HEADER_SIZE))).toBe(true);

    const slot2 = randomSlot();
    const s2 = await writeSlotAndHeader(fh, SIZE, { ...s1, version: 2 }, slot2);
    expect(s2).toMatchObject({ seq: 2, activeSlot: 0, version: 2 });
    expect(await readState(fh, SIZE)).toEqual(s2);
    expect(sameSlot(await readSlot(fh, s2), slot2)).toBe(true);
    expect(decodeHeader(await at(h0, HEADER_SIZE))?.seq).toBe(2);
    expect(decodeHeader(await at(h1, HEADER_SIZE))?.seq).toBe(1);
    // Nothing was written over the image.
    expect((await at(0, 1 << 20)).equals(Buffer.alloc(1 << 20))).toBe(true);
    // Nor into the last MiB, the backup GPT's.
    expect((await at(SIZE - GPT_RESERVE, GPT_RESERVE)).equals(Buffer.alloc(GPT_RESERVE))).toBe(true);
  });

  it('a torn newest copy is ignored: the other copy, and its slot, win', async () => {
    const slot1 = randomSlot();
    const s1 = await writeSlotAndHeader(fh, SIZE, initial(), slot1);
    const s2 = await writeSlotAndHeader(fh, SIZE, { ...s1, version: 2 }, randomSlot());
    expect(s2.seq).toBe(2);
    await put(h0 + 1000, randomBytes(600)); // copy 0 (sequence 2) torn
    const back = await readState(fh, SIZE);
    expect(back).toEqual(s1);
    expect(sameSlot(await readSlot(fh, back!), slot1)).toBe(true);
    // The next update overwrites the torn copy, not the good one.
    const s3 = await writeHeader(fh, SIZE, { ...back!, state: 'dirty' });
    expect(s3.seq).toBe(2);
    expect(await readState(fh, SIZE)).toEqual(s3);
    expect(decodeHeader(await at(h1, HEADER_SIZE))).toEqual(s1);
  });

  it('when both copies are valid the higher sequence wins, whichever copy holds it', async () => {
    const s = initial();
    await put(h0, encodeHeader({ ...s, seq: 9, progress: 9 }));
    await put(h1, encodeHeader({ ...s, seq: 7, progress: 7 }));
    expect((await readState(fh, SIZE))?.progress).toBe(9);
    await put(h0, encodeHeader({ ...s, seq: 10, progress: 10 }));
    await put(h1, encodeHeader({ ...s, seq: 11, progress: 11 }));
    expect((await readState(fh, SIZE))?.progress).toBe(11);
  });

  it('both copies torn: no state', async () => {
    const s1 = await writeSlotAndHeader(fh, SIZE, initial(), randomSlot());
    await writeHeader(fh, SIZE, s1);
    await put(h0 + 5, Buffer.from([0xff]));
    await put(h1 + 4070, Buffer.from([0xff]));
    expect(await readState(fh, SIZE)).toBeNull();
  });

  it('a corrupted slot is DF_ERR_STATE_CORRUPT', async () => {
    const s1 = await writeSlotAndHeader(fh, SIZE, initial(), randomSlot());
    const pos = s1.areaStart + slotSize(G) + 100; // inside slot B, the active one
    const b = await at(pos, 1);
    await put(pos, Buffer.from([b[0]! ^ 0x40]));
    const err = await rejection(readSlot(fh, s1));
    expect(err.code).toBe('DF_ERR_STATE_CORRUPT');
    expect(err.fields).toEqual({ slot: 1 });
    // The inactive slot being damaged does not matter.
    await put(pos, b);
    await put(s1.areaStart + 10, Buffer.from([1, 2, 3]));
    await expect(readSlot(fh, s1)).resolves.toBeDefined();
  });

  it('fingerprints: written beside the slot, read back only with the slot they were made with', async () => {
    const fps1 = randomBytes(16 * 16);
    const slot1 = { ...randomSlot(), fingerprints: fps1 };
    const s1 = await writeSlotAndHeader(fh, SIZE, initial(), slot1);
    const at1 = fingerprintOffset(s1, 1)!;
    expect(at1).toBe(s1.areaStart - fingerprintRegionSize(G));
    expect((await readSlot(fh, s1)).fingerprints).toEqual(fps1);
    // The next slot without fingerprints: none (region A was never written).
    const s2 = await writeSlotAndHeader(fh, SIZE, { ...s1, version: 2 }, randomSlot());
    expect((await readSlot(fh, s2)).fingerprints).toBeNull();
    // Region B is stale once slot B holds another slot.
    const s3 = await writeSlotAndHeader(fh, SIZE, { ...s2, version: 3 }, randomSlot());
    expect(s3.activeSlot).toBe(1);
    expect((await readSlot(fh, s3)).fingerprints).toBeNull();
    // A torn region is no region.
    const fps4 = randomBytes(16 * 16);
    const s4 = await writeSlotAndHeader(fh, SIZE, { ...s3, version: 4 }, { ...randomSlot(), fingerprints: fps4 });
    expect((await readSlot(fh, s4)).fingerprints).toEqual(fps4);
    const pos = fingerprintOffset(s4, s4.activeSlot)! + 4096 + 37;
    const b = await at(pos, 1);
    await put(pos, Buffer.from([b[0]! ^ 1]));
    expect((await readSlot(fh, s4)).fingerprints).toBeNull();
    // Nothing was written over the image.
    expect((await at(0, 1 << 20)).equals(Buffer.alloc(1 << 20))).toBe(true);
  });

  it('fingerprints: a disk with no room before the area keeps none', async () => {
    const tight = (1 << 20) + areaSize(G) + GPT_RESERVE; // image + area + GPT reserve, nothing more
    const s0 = { ...initial(), areaStart: areaStart(G, tight) };
    expect(fingerprintOffset(s0, 0)).toBeNull();
    const s1 = await writeSlotAndHeader(fh, tight, s0, { ...randomSlot(), fingerprints: randomBytes(16 * 16) });
    expect((await readSlot(fh, s1)).fingerprints).toBeNull();
    expect((await at(0, 1 << 20)).equals(Buffer.alloc(1 << 20))).toBe(true);
  });
});
