import { describe, expect, it } from 'vitest';
import { Admission } from './admission.js';

describe('Admission (heavy transfers at once, and the line past them)', () => {
  it('admits up to max, then hands out tickets in arrival order; freed slots go to the head of the line first', () => {
    const a = new Admission(2, 60_000, () => 0);
    const r1 = a.enter();
    const r2 = a.enter();
    expect([r1.admitted, r2.admitted]).toEqual([true, true]);
    const w1 = a.enter();
    const w2 = a.enter();
    if (w1.admitted || w2.admitted) throw new Error('admitted past max');
    expect([w1.position, w2.position]).toEqual([1, 2]);
    expect(w1.ticket).not.toBe(w2.ticket);
    expect(a.waiting).toBe(2);

    if (r1.admitted) {
      r1.release();
      r1.release(); // twice: released once
    }
    expect(a.running).toBe(1);
    // one slot free: the second in line and a newcomer wait, the first in line gets it
    expect(a.enter(w2.ticket)).toMatchObject({ admitted: false, ticket: w2.ticket, position: 2 });
    expect(a.enter()).toMatchObject({ admitted: false, position: 3 });
    expect(a.enter(w1.ticket).admitted).toBe(true);
    expect(a.enter('no-such-ticket')).toMatchObject({ admitted: false, position: 3 }); // an unknown ticket is a newcomer
  });

  it('forgets a ticket not seen for forgetMs (the client gave up), and max 0 admits everything', () => {
    let now = 0;
    const a = new Admission(1, 1000, () => now);
    expect(a.enter().admitted).toBe(true);
    const w = a.enter();
    expect(w).toMatchObject({ admitted: false, position: 1 });
    now = 500;
    expect(a.enter()).toMatchObject({ admitted: false, position: 2 });
    now = 1200; // the first ticket is gone, the second (seen at 500) is first now
    expect(a.waiting).toBe(1);
    const open = new Admission(0, 1000);
    for (let i = 0; i < 100; i++) expect(open.enter().admitted).toBe(true);
  });
});
