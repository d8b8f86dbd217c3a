import { describe, expect, it } from 'vitest';
import { Admission, type Admitted } from './admission.js';

const go = (a: Admitted): Extract<Admitted, { admitted: true }> => {
  if (!a.admitted) throw new Error(`refused at position ${a.position}`);
  return a;
};

describe('Admission (clients transferring at once, and the line past them)', () => {
  it('admits up to max clients; a pass lets its client through while it transfers; past max, tickets in arrival order', () => {
    let now = 0;
    const a = new Admission(2, 5, 2000, () => now);
    const c1 = go(a.enter());
    const c2 = go(a.enter());
    expect(c1.ticket).not.toBe(c2.ticket);
    // c1's next requests (two in flight) go through on its pass, whatever the line
    const w1 = a.enter();
    expect(w1).toMatchObject({ admitted: false, position: 1 });
    const more = [go(a.enter(c1.ticket)), go(a.enter(c1.ticket))];
    const w2 = a.enter();
    expect(w2).toMatchObject({ admitted: false, position: 2 });
    expect(a.running).toBe(2);
    expect(a.waiting).toBe(2);

    // c1 finishes: its slot frees only after the grace (its next fetch usually comes sooner)
    for (const r of [c1, ...more]) {
      r.release();
      r.release(); // twice: released once
    }
    now = 1000;
    expect(a.enter(w1.ticket)).toMatchObject({ admitted: false, position: 1 });
    now = 3100;
    // the slot is free: the second in line and a newcomer wait, the first in line gets it (and keeps its ticket)
    expect(a.enter(w2.ticket)).toMatchObject({ admitted: false, ticket: w2.ticket, position: 2 });
    expect(a.enter()).toMatchObject({ admitted: false, position: 3 });
    expect(go(a.enter(w1.ticket)).ticket).toBe(w1.ticket);
    expect(a.enter('no-such-ticket')).toMatchObject({ admitted: false, position: 3 }); // an unknown ticket is a newcomer
  });

  it('forgets a waiting ticket not seen within 1.5 × its Retry-After + 2 s (the client gave up); max 0 admits everything', () => {
    let now = 0;
    const a = new Admission(1, 1, 2000, () => now);
    const c = go(a.enter());
    expect(a.enter()).toMatchObject({ admitted: false, position: 1, retryAfter: 1 }); // never below 1 s
    now = 500;
    expect(a.enter()).toMatchObject({ admitted: false, position: 2 });
    now = 3600; // the first ticket (forgotten at 3500) is gone, the second (seen at 500) is first now
    expect(a.waiting).toBe(1);
    expect(go(a.enter(c.ticket)).ticket).toBe(c.ticket); // a pass in use never expires
    const open = new Admission(0, 5);
    for (let i = 0; i < 100; i++) expect(open.enter().admitted).toBe(true);
  });

  it('Retry-After: the base near the head of the line; further back, its place over the rate slots freed in the last minute (at most 60 s)', () => {
    let now = 0;
    const a = new Admission(1, 5, 0, () => now);
    const slot = () => go(a.enter()).release();
    slot();
    now = 120_000; // a lull: slots freed long ago say nothing
    slot();
    now = 120_500;
    slot();
    now = 121_000;
    slot();
    now = 121_500;
    slot();
    now = 122_000;
    go(a.enter()); // five freed from 120 000 to 122 000 (each when the next came, after a 2-minute lull): 2.5 per s
    const line = Array.from({ length: 200 }, () => a.enter());
    expect(line[0]).toMatchObject({ admitted: false, position: 1, retryAfter: 2 }); // next to get a slot: a third of the base
    expect(line[1]).toMatchObject({ position: 2, retryAfter: 5 }); // within twice max: the base
    expect(line[9]).toMatchObject({ position: 10, retryAfter: 5 }); // 0.5 × 9 / 2.5 = 1.8: never below the base
    expect(line[29]).toMatchObject({ position: 30, retryAfter: 6 }); // 0.5 × 29 / 2.5 per s
    expect(line[199]).toMatchObject({ position: 200, retryAfter: 40 }); // 0.5 × 199 / 2.5
    expect(a.enter()).toMatchObject({ position: 201, retryAfter: 40 });
    // a ticket told to wait 40 s is still in line 60 s later, and keeps its place
    now += 60_000;
    expect(a.enter((line[199] as { ticket: string }).ticket)).toMatchObject({ admitted: false });
    // a slow line: at most 60 s
    const slow = new Admission(1, 5, 0, () => now);
    for (let k = 0; k < 5; k++) {
      now += 10_000;
      go(slow.enter()).release();
    }
    now += 10_000;
    go(slow.enter());
    expect(Array.from({ length: 100 }, () => slow.enter()).at(-1)).toMatchObject({ position: 100, retryAfter: 60 });
    // no slot freed in the last minute: the base again
    const b = new Admission(1, 5, 0, () => now);
    go(b.enter());
    expect(Array.from({ length: 50 }, () => b.enter()).at(-1)).toMatchObject({ position: 50, retryAfter: 5 });
  });
});
