import { describe, expect, it } from 'vitest';
import { decodeHeader, encodeHeader, type DiskState } from './state-area.js';

const base: DiskState = {
  seq: 7, areaStart: 1 << 20, geometry: { virtualSize: 1 << 20, chunkSize: 65536 }, state: 'applying', activeSlot: 1, version: 3, target: 4,
  progress: 9, lastConflict: null, slotHash: Buffer.alloc(32, 1), image: 'win', desktop: 'alice', secret: Buffer.alloc(32, 2),
};

describe('state area: the last disk failure', () => {
  it('round-trips with the rest of the state untouched; a long message is cut to its field', () => {
    const failure = { code: 'DF_ERR_DISK_FULL' as const, errno: 'ENOSPC', op: 'write', at: '2026-01-02T03:04:05.678Z', message: `the disk is full ${'é'.repeat(200)}` };
    const back = decodeHeader(encodeHeader({ ...base, failure }))!;
    expect(back.failure).toEqual({ ...failure, message: Buffer.from(failure.message).subarray(0, 159).toString() });
    expect(Buffer.byteLength(back.failure!.message)).toBeLessThanOrEqual(160);
    expect({ ...back, failure: undefined }).toEqual({ ...base, failure: undefined });
  });

  it('a header without one (older agents wrote zeros there) decodes as none', () => {
    expect(decodeHeader(encodeHeader(base))).toEqual(decodeHeader(encodeHeader({ ...base, failure: null })));
    expect(decodeHeader(encodeHeader(base))!.failure ?? null).toBeNull();
  });
});
