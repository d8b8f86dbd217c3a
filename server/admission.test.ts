import { describe, expect, it } from 'vitest';
import { Admission, type Admitted } from './admission.js';

const go = (a: Admitted): Extract<Admitted, { admitted: true }> => {
  if (!a.admitted) throw new Error(`refused at position ${a.position}`);
  return a;
};

describe('Admission (clients transferring at once, and the line past them)', () => {
  it('admits up to max clients; a pass lets its client through while it transfers; past max, tickets in arrival order', () => {
    let now = 0;
    const a = new Admission(2, 60_000, 2000, () => now);
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

  it('forgets a waiting ticket not seen for forgetMs (the client gave up); max 0 admits everything', () => {
    let now = 0;
    const a = new Admission(1, 1000, 2000, () => now);
    const c = go(a.enter());
    expect(a.enter()).toMatchObject({ admitted: false, position: 1 });
    now = 500;
    expect(a.enter()).toMatchObject({ admitted: false, position: 2 });
    now = 1200; // the first ticket is gone, the second (seen at 500) is first now
    expect(a.waiting).toBe(1);
    expect(go(a.enter(c.ticket)).ticket).toBe(c.ticket); // a pass in use never expires
    const open = new Admission(0, 1000);
    for (let i = 0; i < 100; i++) expect(open.enter().admitted).toBe(true);
  });
});
