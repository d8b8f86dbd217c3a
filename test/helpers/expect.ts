import { expect } from 'vitest';
import { DeskfuseError } from '../../src/errors.js';

/** mulberry32: a small seeded PRNG (numbers in [0, 1)), so fuzz failures replay. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The DeskfuseError `fn` throws (fails the test if it throws anything else or nothing). */
export function thrown(fn: () => unknown): DeskfuseError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DeskfuseError);
    return err as DeskfuseError;
  }
  throw new Error('expected a throw');
}

/** The DeskfuseError a promise rejects with. */
export async function rejection(p: Promise<unknown>): Promise<DeskfuseError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(DeskfuseError);
    return err as DeskfuseError;
  }
  throw new Error('expected a rejection');
}

/** Fuzz inputs from valid encodings: every truncation, and two single-byte flips at every position. */
export function mutations(valid: Buffer[], byte: () => number): Buffer[] {
  const out: Buffer[] = [];
  for (const v of valid) {
    for (let n = 0; n < v.length; n++) out.push(v.subarray(0, n));
    for (let i = 0; i < v.length; i++) {
      for (const x of [byte() | 1, 0xff]) {
        const m = Buffer.from(v);
        m[i] = m[i]! ^ x;
        out.push(m);
      }
    }
  }
  return out;
}
