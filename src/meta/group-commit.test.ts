import { describe, expect, it } from 'vitest';
import { GroupCommit } from './group-commit.js';

describe('GroupCommit', () => {
  it('items added in one turn are written together, in order; those added while writing form the next batch', async () => {
    const batches: number[][] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const g = new GroupCommit<number, string>(async (xs) => {
      batches.push(xs);
      if (batches.length === 1) await gate;
      return xs.map((x) => `r${x}`);
    });
    const first = [1, 2, 3].map((x) => g.add(x));
    await new Promise((r) => setImmediate(r));
    const second = [4, 5].map((x) => g.add(x)); // while batch 1 is being written
    release();
    expect(await Promise.all([...first, ...second])).toEqual(['r1', 'r2', 'r3', 'r4', 'r5']);
    expect(batches).toEqual([[1, 2, 3], [4, 5]]);
  });

  it('a batch holds at most `max` items', async () => {
    const sizes: number[] = [];
    const g = new GroupCommit<number, number>(async (xs) => (sizes.push(xs.length), xs), { max: 4 });
    expect(await Promise.all(Array.from({ length: 10 }, (_, i) => g.add(i)))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(sizes).toEqual([4, 4, 2]);
  });

  it('a failed batch fails each item; with isolate, only the bad item fails', async () => {
    const write = async (xs: number[]) => {
      if (xs.includes(13)) throw new Error('bad item');
      return xs;
    };
    const plain = new GroupCommit(write);
    expect((await Promise.allSettled([12, 13, 14].map((x) => plain.add(x)))).map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
    const iso = new GroupCommit(write, { isolate: true });
    const r = await Promise.allSettled([12, 13, 14].map((x) => iso.add(x)));
    expect(r.map((x) => (x.status === 'fulfilled' ? x.value : (x.reason as Error).message))).toEqual([12, 'bad item', 14]);
  });
});
