import { describe, expect, it } from 'vitest';
import type { RefRow } from './model.js';
import { effectivePolicy, planRetention, policyProblems, type RetentionPolicy, type RetentionRoot, type RetentionVersion } from './retention.js';

const NOW = new Date(Date.UTC(2026, 5, 1));
const daysAgo = (d: number) => new Date(NOW.getTime() - d * 86_400_000).toISOString();
const P: RetentionPolicy = { keepLast: 3, keepDays: 14, conflictDays: 30 };

/** A straight line 1..n, version k made (n - k + 100) days ago (all old), unless `ages` says otherwise. */
function chain(n: number, ages: Record<number, number> = {}, landed: Record<number, string> = {}): RetentionVersion[] {
  return Array.from({ length: n }, (_, i) => {
    const v = i + 1;
    return { version: v, parent: v === 1 ? null : v - 1, createdAt: daysAgo(ages[v] ?? n - v + 100), landedRef: landed[v] ?? 'main', layer: `l${v}`, index: `i${v}` };
  });
}
const ref = (name: string, version: number, updatedDaysAgo = 100): RefRow => ({ image: 'img', name, version, updatedAt: daysAgo(updatedDaysAgo) });
const plan = (versions: RetentionVersion[], refs: RefRow[], roots: RetentionRoot[] = [], policy = P) => planRetention({ versions, refs, roots, policy, now: NOW });
const dropped = (p: ReturnType<typeof plan>) => p.drop.map((v) => v.version);
const whyOf = (p: ReturnType<typeof plan>, v: number) => p.keep.find((k) => k.version === v)?.why ?? [];

describe('retention plan', () => {
  it('keeps the last N of a ref line and drops the older ones', () => {
    const p = plan(chain(8), [ref('main', 8)]);
    expect(p.keep.map((k) => k.version)).toEqual([8, 7, 6]);
    expect(dropped(p)).toEqual([5, 4, 3, 2, 1]);
    expect(whyOf(p, 8)).toEqual(['ref main', 'last 3 of main', 'newest version number (never reused)']);
  });

  it('keeps every version younger than D days, whatever the line', () => {
    const p = plan(chain(8, { 2: 13, 1: 15 }), [ref('main', 8)]);
    expect(dropped(p)).toEqual([5, 4, 3, 1]);
    expect(whyOf(p, 2)).toEqual(['younger than 14 days']);
  });

  it('keeps conflict versions C days after they were made, even once their ref is gone', () => {
    const versions = chain(8, { 4: 29, 3: 31 }, { 4: 'conflicts/main/x', 3: 'conflicts/main/y' });
    const p = plan(versions, [ref('main', 8)]);
    expect(whyOf(p, 4)).toEqual(['conflict younger than 30 days']);
    expect(dropped(p)).toContain(3);
  });

  it('an unresolved conflict ref keeps its version and is listed; a resolved old one is deleted', () => {
    // 1-2-3-4-5 main; 6 (parent 3) conflict A unresolved; 7 (parent 4) conflict B resolved: main's line goes through it? no: make main's head 8 = child of 7.
    const versions: RetentionVersion[] = [
      ...chain(5),
      { version: 6, parent: 3, createdAt: daysAgo(60), landedRef: 'conflicts/main/a', layer: 'l6', index: 'i6' },
      { version: 7, parent: 5, createdAt: daysAgo(60), landedRef: 'conflicts/main/b', layer: 'l7', index: 'i7' },
      { version: 8, parent: 7, createdAt: daysAgo(50), landedRef: 'main', layer: 'l8', index: 'i8' },
    ];
    const p = plan(versions, [ref('main', 8), ref('conflicts/main/a', 6, 60), ref('conflicts/main/b', 7, 60)], [], { ...P, keepLast: 1 });
    expect(p.conflicts).toEqual([
      { ref: 'conflicts/main/a', version: 6, updatedAt: daysAgo(60), resolved: false, deleted: false },
      { ref: 'conflicts/main/b', version: 7, updatedAt: daysAgo(60), resolved: true, deleted: true },
    ]);
    expect(whyOf(p, 6)).toContain('ref conflicts/main/a');
    expect(dropped(p)).toEqual([7, 5, 4, 3, 2, 1]);
  });

  it('a resolved conflict ref younger than C days stays', () => {
    const versions = chain(3);
    const p = plan(versions, [ref('main', 3), ref('conflicts/main/z', 2, 5)], [], { ...P, keepLast: 1 });
    expect(p.conflicts[0]).toMatchObject({ resolved: true, deleted: false });
    expect(whyOf(p, 2)).toContain('ref conflicts/main/z');
  });

  it('keeps every root kind: desktop head, endpoint disk, VDI base, and a live lease keeps its whole line', () => {
    const versions = chain(20);
    const roots: RetentionRoot[] = [
      { kind: 'endpoint', name: 'pc1', version: 2, detail: 'its disk records it' },
      { kind: 'vdi-session', name: 's1', version: 4 },
      { kind: 'desktop', name: 'alice', version: 20 },
    ];
    const p = plan(versions, [ref('main', 20)], roots);
    expect(whyOf(p, 2)).toEqual(['endpoint pc1 (its disk records it)']);
    expect(whyOf(p, 4)).toEqual(['vdi-session s1']);
    expect(dropped(p)).toEqual([17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 3, 1]);
    const leased = plan(versions, [ref('main', 20)], [{ kind: 'lease', name: 'endpoint:pc1', version: 20, line: true }]);
    expect(dropped(leased)).toEqual([]);
    expect(whyOf(leased, 1)).toEqual(['line of lease endpoint:pc1']);
  });

  it('never drops the newest version number, and stops a line at a gap', () => {
    // main rolled back to 2: 5 is the newest number, 3 and 4 go.
    const versions = chain(5).filter((v) => v.version !== 1);
    const p = plan(versions, [ref('main', 2)], [], { ...P, keepLast: 5 });
    expect(dropped(p)).toEqual([4, 3]);
    expect(whyOf(p, 5)).toEqual(['newest version number (never reused)']);
  });

  it('an image without versions plans nothing', () => {
    expect(plan([], [])).toMatchObject({ keep: [], drop: [], conflicts: [] });
  });
});

describe('retention policy values', () => {
  it('reports every problem, and overrides take precedence over defaults', () => {
    expect(policyProblems({ keepLast: 0, keepDays: -1, conflictDays: 1.5 })).toEqual([
      'keepLast: expected an integer 1-1000000, got 0',
      'keepDays: expected an integer 0-36500, got -1',
      'conflictDays: expected an integer 0-36500, got 1.5',
    ]);
    expect(effectivePolicy(P, { keepLast: 1, keepDays: null, conflictDays: 0 })).toEqual({ keepLast: 1, keepDays: 14, conflictDays: 0 });
  });
});
