import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nextScrubDelay, recordScrub } from './scrub.js';

const DAY = 86_400;
const file = () => path.join(mkdtempSync(path.join(tmpdir(), 'df-scrub-')), 'scrub-last.json');

describe('scrub schedule', () => {
  it('a store never scrubbed counts as scrubbed at first start: the first pass one interval later, and that start is recorded', async () => {
    const f = file();
    const now = Date.parse('2026-12-07T08:00:00Z');
    expect(await nextScrubDelay(f, DAY, now)).toBe(DAY * 1000);
    expect(JSON.parse(readFileSync(f, 'utf8'))).toEqual({ at: '2026-12-07T08:00:00.000Z' });
    // restarted an hour later: the pass stays where it was, not a minute after this start
    expect(await nextScrubDelay(f, DAY, now + 3_600_000)).toBe((DAY - 3600) * 1000);
  });

  it('a pass overdue runs a minute after start, never in the first minute', async () => {
    const f = file();
    await recordScrub(f, Date.parse('2026-12-01T00:00:00Z'));
    expect(await nextScrubDelay(f, DAY, Date.parse('2026-12-07T08:00:00Z'))).toBe(60_000);
  });

  it('an unreadable or future record is replaced by now', async () => {
    const f = file();
    writeFileSync(f, 'not json');
    const now = Date.parse('2026-12-07T08:00:00Z');
    expect(await nextScrubDelay(f, 3600, now)).toBe(3_600_000);
    await recordScrub(f, now + 10 * DAY * 1000); // a clock that was wrong
    expect(await nextScrubDelay(f, 3600, now)).toBe(3_600_000);
    expect(JSON.parse(readFileSync(f, 'utf8'))).toEqual({ at: '2026-12-07T08:00:00.000Z' });
  });
});
