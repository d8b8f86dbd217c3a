import { describe, expect, it } from 'vitest';
import { TransferSlots } from './slots.js';

describe('TransferSlots', () => {
  const slots = (maxActive = 2, maxQueued = 2) => new TransferSlots({ maxActive, maxQueued, staleMs: 10_000 });

  it('starts up to maxActive, then queues up to maxQueued, then refuses', () => {
    const s = slots();
    expect(['a:1', 'b:1', 'c:1', 'd:1', 'e:1'].map((c) => s.request(c, 0))).toEqual(['start', 'start', 'queued', 'queued', 'refused']);
    expect({ active: s.active, queued: s.queued, refused: s.refused, peak: s.peakActive }).toEqual({ active: 2, queued: 2, refused: 1, peak: 2 });
  });

  it('a freed slot goes to the first in line (FIFO); the peak never passes maxActive', () => {
    const s = slots(2, 10);
    for (const c of ['a:1', 'b:1', 'c:1', 'd:1', 'e:1']) s.request(c, 0);
    expect(s.release(1).start).toBe('c:1');
    expect(s.release(2).start).toBe('d:1');
    expect(s.release(3).start).toBe('e:1');
    expect(s.release(4)).toEqual({ dropped: [] });
    expect(s.active).toBe(1);
    expect(s.peakActive).toBe(2);
  });

  it('a retransmitted RRQ already in line is dropped and keeps its place; from the same address, another port is another client', () => {
    const s = slots(1, 3);
    s.request('a:1', 0);
    expect(s.request('b:7', 0)).toBe('queued');
    expect(s.request('c:1', 0)).toBe('queued');
    expect(s.request('b:7', 500)).toBe('duplicate');
    expect(s.request('b:8', 500)).toBe('queued');
    expect(s.queued).toBe(3);
    expect(s.release(600).start).toBe('b:7');
  });

  it('an RRQ from a client whose transfer runs is a new request (a PXE ROM re-asks from the same port after its tsize probe)', () => {
    const s = slots(1, 1);
    expect(s.request('a:1', 0)).toBe('start');
    expect(s.request('a:1', 0)).toBe('queued');
    expect(s.release(1).start).toBe('a:1');
  });

  it('a waiting client not heard from for staleMs is skipped at its turn; one that retransmitted is not', () => {
    const s = slots(1, 5);
    s.request('a:1', 0);
    s.request('gone:1', 0);
    s.request('alive:1', 0);
    s.request('alive:1', 8_000); // retransmitted: still there
    expect(s.release(15_000)).toEqual({ start: 'alive:1', dropped: ['gone:1'] });
    expect(s.queued).toBe(0);
  });

  it('maxQueued 0 refuses as soon as every slot is taken; drain empties the line', () => {
    const s = slots(1, 0);
    expect([s.request('a:1', 0), s.request('b:1', 0)]).toEqual(['start', 'refused']);
    const t = slots(1, 3);
    t.request('a:1', 0);
    t.request('b:1', 0);
    t.request('c:1', 0);
    expect(t.drain()).toEqual(['b:1', 'c:1']);
    expect(t.queued).toBe(0);
  });
});
