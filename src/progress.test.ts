import { describe, expect, it } from 'vitest';
import { fmtBytes, Progress } from './progress.js';

function fakeTty() {
  const chunks: string[] = [];
  return { stream: { isTTY: true, write: (s: string) => chunks.push(s) } as unknown as NodeJS.WriteStream, chunks };
}

describe('Progress', () => {
  it('draws bytes, rate and ETA on a TTY and a final line', () => {
    const t = fakeTty();
    const p = Progress.for('import', 10 * 1024 * 1024, true, t.stream);
    p.add(5 * 1024 * 1024);
    p.finish();
    const text = t.chunks.join('');
    expect(text).toMatch(/^\rimport \[#{12}\.{12}\] 5\.0 MiB\/10\.0 MiB 50% [\d.]+ [KMG]?i?B\/s ETA \d+s/);
    expect(text.endsWith('\n')).toBe(true);
  });

  it('stays silent when the stream is not a TTY or progress is off', () => {
    const t = fakeTty();
    (t.stream as { isTTY: boolean }).isTTY = false;
    const p = Progress.for('x', 100, true, t.stream);
    p.add(50);
    p.finish();
    const q = Progress.for('x', 100, false, fakeTty().stream);
    q.add(1);
    expect(t.chunks).toEqual([]);
  });

  it("'always' (a --progress flag) writes plain lines where the stream is not a TTY", () => {
    const t = fakeTty();
    (t.stream as { isTTY: boolean }).isTTY = false;
    const p = Progress.for('commit', 4096, 'always', t.stream);
    p.add(1024);
    p.add(3072); // within the second: no second line until finish
    p.finish();
    expect(t.chunks).toHaveLength(2);
    expect(t.chunks[0]).toMatch(/^commit \[#{6}\.{18}\] 1\.0 KiB\/4\.0 KiB 25% .*\n$/);
    expect(t.chunks[1]).toMatch(/^commit \[#{24}\] 4\.0 KiB\/4\.0 KiB 100% .*\n$/);
  });

  it('formats sizes', () => {
    expect([fmtBytes(0), fmtBytes(1536), fmtBytes(3 * 1024 ** 3)]).toEqual(['0 B', '1.5 KiB', '3.0 GiB']);
  });
});
