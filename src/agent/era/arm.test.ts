import { describe, expect, it } from 'vitest';
import { areaStart, fingerprintOffset, fingerprintRegionSize, headersEnd } from '../state-area.js';
import { decodeDescriptor, encodeDescriptor, eraMetadataBytes, eraSpace } from './arm.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe('era space', () => {
  it('lies between the image and the fingerprint regions, never overlapping either, for any disk and image size', () => {
    let placed = 0;
    for (const virtualSize of [48 * MiB, 1536 * MiB + 4096, 64 * GiB, 256 * GiB + 12345]) {
      for (const chunkSize of [64 * 1024, 1024 * 1024]) {
        const g = { virtualSize, chunkSize };
        for (const extra of [0, 1 * MiB, 3 * MiB, 17 * MiB + 4096, 64 * MiB, 2 * GiB]) {
          const size = virtualSize + extra + 64 * MiB;
          let start: number;
          try {
            start = areaStart(g, size);
          } catch {
            continue; // too small for the state area itself
          }
          const s = { areaStart: start, geometry: g };
          const e = eraSpace(s);
          if (!e) continue;
          placed++;
          expect(e.start).toBeGreaterThanOrEqual(virtualSize);
          expect(e.start + e.length).toBeLessThanOrEqual(start - 2 * fingerprintRegionSize(g));
          expect(e.start + e.length).toBeLessThanOrEqual(fingerprintOffset(s, 0)!);
          expect(e.length).toBeGreaterThanOrEqual(eraMetadataBytes(g));
          expect(headersEnd(size)).toBeGreaterThan(start);
        }
      }
    }
    expect(placed).toBeGreaterThan(10);
  });

  it('is absent when the gap is too small, rather than overlapping', () => {
    const g = { virtualSize: 48 * MiB, chunkSize: 65536 };
    const size = 48 * MiB + 2 * MiB; // room for the area and the reserve, not for era metadata
    expect(eraSpace({ areaStart: areaStart(g, size), geometry: g })).toBeNull();
  });

  it('sizes the metadata to the era array, copy on write: a 256 GiB disk in 64 KiB blocks gets 38 MiB', () => {
    expect(eraMetadataBytes({ virtualSize: 256 * GiB, chunkSize: 65536 }) / MiB).toBe(38);
  });
});

describe('arming descriptor', () => {
  it('round-trips, and a flipped byte voids it', () => {
    const d = {
      token: Buffer.alloc(16, 9), metaStart: 50 * MiB, metaLength: 2 * MiB, eraBlockSectors: 128, slotHash: Buffer.alloc(32, 3), version: 7,
      partitions: [{ start: MiB, length: 40 * MiB, mounts: 12 }],
    };
    const b = encodeDescriptor(d);
    expect(decodeDescriptor(b)).toEqual(d);
    b.writeUInt8(b.readUInt8(130) ^ 1, 130);
    expect(decodeDescriptor(b)).toBeNull();
  });
});
