import { describe, expect, it } from 'vitest';
import { inLanes } from './lanes.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('inLanes', () => {
  it('runs every item, at most `lanes` at once', async () => {
    let now = 0;
    let most = 0;
    const seen: number[] = [];
    await inLanes([1, 2, 3, 4, 5, 6, 7], 3, async (x) => {
      most = Math.max(most, ++now);
      await tick(2);
      seen.push(x);
      now--;
    });
    expect(seen.sort()).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(most).toBe(3);
  });

  it('the first failure stops the lanes taking more, and is thrown only once every lane has settled', async () => {
    const started: number[] = [];
    let running = 0;
    const p = inLanes([1, 2, 3, 4, 5, 6], 2, async (x) => {
      started.push(x);
      running++;
      await tick(x === 1 ? 1 : 20);
      running--;
      if (x === 1) throw new Error('item 1');
    });
    await expect(p).rejects.toThrow('item 1');
    expect(running).toBe(0); // the slow item 2 finished before the error came out
    expect(started).toEqual([1, 2]);
  });
});
