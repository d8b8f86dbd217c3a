import { describe, expect, it } from 'vitest';
import { ChunkIndex } from '../image/chunk-index.js';
import type { Geometry } from '../image/geometry.js';
import { plan, type Op } from './plan.js';
import { prng } from '../../test/helpers/expect.js';

const G: Geometry = { virtualSize: 8 * 4096, chunkSize: 4096 };
const id = (byte: number) => Buffer.alloc(32, byte);
const hex = (byte: number) => id(byte).toString('hex');

/** An index from one byte per position (0 = zero chunk). */
function index(bytes: number[]): ChunkIndex {
  const ix = ChunkIndex.empty(G);
  bytes.forEach((b, i) => ix.set(i, id(b)));
  return ix;
}

describe('plan', () => {
  const actual = index([1, 2, 3, 0, 5, 6, 7, 8]);
  const base = index([1, 2, 9, 0, 5, 6, 7, 8]);
  //                   =  ≠  ≠  ≠  =  ≠  ≠  =
  const target = index([1, 0, 4, 4, 5, 0xa, 0xb, 8]);

  it('nothing for equal positions; zero, patch, fetch for the others, in disk order', () => {
    const base2 = index([1, 2, 9, 0, 5, 6, 0xc, 8]);
    expect(plan({ actual, target, base: base2, deltas: true })).toEqual<Op[]>([
      { pos: 1, kind: 'zero', id: '' }, //          target is zero
      { pos: 2, kind: 'fetch', id: hex(4) }, //     the disk does not hold the base's chunk
      { pos: 3, kind: 'patch', id: hex(4) }, //     disk and base both zero here: rebuild from blocks
      { pos: 5, kind: 'patch', id: hex(0xa) }, //   disk holds the base's chunk
      { pos: 6, kind: 'fetch', id: hex(0xb) }, //   base differs from the disk
    ]);
  });

  it('without a delta path everything that differs is fetched (or zeroed)', () => {
    const want: Op[] = [
      { pos: 1, kind: 'zero', id: '' },
      { pos: 2, kind: 'fetch', id: hex(4) },
      { pos: 3, kind: 'fetch', id: hex(4) },
      { pos: 5, kind: 'fetch', id: hex(0xa) },
      { pos: 6, kind: 'fetch', id: hex(0xb) },
    ];
    expect(plan({ actual, target, base, deltas: false })).toEqual(want);
    expect(plan({ actual, target, base: null, deltas: true })).toEqual(want);
  });

  it('a disk already at the target needs nothing', () => {
    expect(plan({ actual: target.clone(), target, base, deltas: true })).toEqual([]);
  });

  it('a blank disk towards a version: zeros stay, the rest is fetched', () => {
    const blank = ChunkIndex.empty(G);
    expect(plan({ actual: blank, target, base: null, deltas: false }).map((o) => [o.pos, o.kind])).toEqual([[0, 'fetch'], [2, 'fetch'], [3, 'fetch'], [4, 'fetch'], [5, 'fetch'], [6, 'fetch'], [7, 'fetch']]);
  });

  it('random indexes: one op per differing position, ascending, and the kind the rules say', () => {
    const rnd = prng(0x91a);
    const pick = () => Math.floor(rnd() * 4);
    for (let k = 0; k < 200; k++) {
      const a = index(Array.from({ length: 8 }, pick));
      const t = index(Array.from({ length: 8 }, pick));
      const b = k % 3 ? index(Array.from({ length: 8 }, pick)) : null;
      const deltas = k % 2 === 0;
      const ops = plan({ actual: a, target: t, base: b, deltas });
      const differing = [...Array(8).keys()].filter((p) => !a.idAt(p).equals(t.idAt(p)));
      expect(ops.map((o) => o.pos)).toEqual(differing);
      for (const o of ops) {
        const kind = t.isZeroAt(o.pos) ? 'zero' : deltas && b && a.idAt(o.pos).equals(b.idAt(o.pos)) ? 'patch' : 'fetch';
        expect(o).toEqual({ pos: o.pos, kind, id: kind === 'zero' ? '' : t.idAt(o.pos).toString('hex') });
      }
    }
  });

  it('does not modify its inputs', () => {
    const before = [actual, target, base].map((ix) => ix.encode().toString('hex'));
    plan({ actual, target, base, deltas: true });
    expect([actual, target, base].map((ix) => ix.encode().toString('hex'))).toEqual(before);
  });
});
