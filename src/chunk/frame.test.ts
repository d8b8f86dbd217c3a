import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { encodeFrame, openFrame } from './frame.js';
import { hashBytes, idHex } from './id.js';
import { thrown } from '../../test/helpers/expect.js';

const raw = Buffer.from('a chunk of disk '.repeat(256));
const rawId = idHex(hashBytes(raw));

describe('openFrame', () => {
  it('opens a good frame to the raw bytes', () => {
    const frame = encodeFrame(raw);
    expect(frame.length).toBeLessThan(raw.length);
    expect(openFrame(rawId, frame, 1 << 20)).toEqual(raw);
  });

  it('opens frames written at other zstd levels', () => {
    expect(openFrame(rawId, encodeFrame(raw, 1), 1 << 20)).toEqual(raw);
    expect(openFrame(rawId, encodeFrame(raw, 19), 1 << 20)).toEqual(raw);
  });

  it('a frame of other bytes is DF_ERR_CHUNK_INVALID with {id, got}', () => {
    const other = Buffer.from('something else');
    const err = thrown(() => openFrame(rawId, encodeFrame(other), 1 << 20));
    expect(err.code).toBe('DF_ERR_CHUNK_INVALID');
    expect(err.fields).toEqual({ id: rawId, got: idHex(hashBytes(other)) });
  });

  it.each([
    ['garbage', Buffer.from('this is not a zstd frame at all')],
    ['empty', Buffer.alloc(0)],
    ['a truncated frame', encodeFrame(raw).subarray(0, 10)],
  ])('%s is DF_ERR_CHUNK_INVALID', (_name, frame) => {
    const err = thrown(() => openFrame(rawId, frame, 1 << 20));
    expect(err.code).toBe('DF_ERR_CHUNK_INVALID');
    expect(err.fields.id).toBe(rawId);
  });

  it('a frame that inflates beyond the limit is DF_ERR_CHUNK_INVALID', () => {
    const err = thrown(() => openFrame(rawId, encodeFrame(raw), raw.length - 1));
    expect(err.code).toBe('DF_ERR_CHUNK_INVALID');
    expect(err.fields).toEqual({ id: rawId, size: raw.length });
  });
});
