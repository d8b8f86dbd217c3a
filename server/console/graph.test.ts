import { describe, expect, it } from 'vitest';
import { layoutGraph, rowSvg } from './graph.js';

describe('version graph lanes', () => {
  it('a straight line is one lane', () => {
    const g = layoutGraph([{ version: 1, parent: null }, { version: 2, parent: 1 }, { version: 3, parent: 2 }]);
    expect(g.width).toBe(1);
    expect(g.rows.map((r) => [r.version, r.lane])).toEqual([[3, 0], [2, 0], [1, 0]]);
    expect(g.rows.at(-1)!.below).toEqual([]);
  });

  it('a conflict forks from its parent in its own lane and joins there', () => {
    // 1 ← 2 ← 4 (main), 2 ← 3 (conflict), 1 ← 5 (desktops/alice)
    const g = layoutGraph([
      { version: 1, parent: null }, { version: 2, parent: 1 }, { version: 3, parent: 2 }, { version: 4, parent: 2 }, { version: 5, parent: 1 },
    ]);
    const at = (v: number) => g.rows.find((r) => r.version === v)!;
    expect(at(5).lane).toBe(0);
    expect(at(4).lane).toBe(1);
    expect(at(3).lane).toBe(2);
    // 2 is awaited by lanes 1 and 2: drawn in the first, the other ends there.
    expect(at(2).above).toEqual([1, 2, 2]);
    expect(at(2).lane).toBe(1);
    expect(at(2).below).toEqual([1, 1]);
    expect(at(1).lane).toBe(0);
    expect(at(1).below).toEqual([]);
    expect(g.width).toBe(3);
    const svg = rowSvg(at(2), g.width, { conflict: false, head: false });
    expect(svg).toContain('<line x1="36" y1="0" x2="22" y2="14"/>'); // lane 2 joins lane 1
    expect(svg).toContain('cx="22"');
  });

  it('a version whose parent is beyond the list keeps its lane open to the bottom', () => {
    const g = layoutGraph([{ version: 10, parent: 9 }, { version: 12, parent: 7 }]);
    expect(g.rows.at(-1)!.below).toEqual([7, 9]);
  });
});
