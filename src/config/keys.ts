/**
 * Unknown config-file keys, reported with the nearest known key ("did you mean"). Keys starting
 * with "//" are comments (JSON has none), so a config file can explain itself.
 */
export function checkKeys(
  block: string | null, obj: Record<string, unknown>, known: readonly string[], problems: string[],
  opts: { renamed?: Readonly<Record<string, string>>; elsewhere?: Readonly<Record<string, string>> } = {},
): void {
  const name = (k: string) => (block ? `${block}.${k}` : JSON.stringify(k));
  const renamed = opts.renamed ?? {};
  for (const k of Object.keys(obj)) {
    if (known.includes(k) || k in renamed || k.startsWith('//')) continue;
    // A key that belongs in a block (a flag's name, e.g. nbdListen → nbd.listen), else the nearest one
    // here (an old name stands for its new one).
    const c = closest(k, [...known, ...Object.keys(renamed)]);
    const near = opts.elsewhere?.[k] ?? (c !== undefined ? name(renamed[c] ?? c) : undefined);
    problems.push(`config file: unknown key ${name(k)}${near ? ` (did you mean ${near}?)` : ''}`);
  }
}

/** The known key nearest to `key` (edit distance ignoring case, '-' and '_': at most a third of its length, at least 1), if any. */
export function closest(key: string, known: readonly string[]): string | undefined {
  const k = key.toLowerCase().replace(/[-_]/g, '');
  let best: string | undefined;
  let bestD = Math.max(1, Math.floor(k.length / 3)) + 1;
  for (const cand of known) {
    const c = cand.toLowerCase();
    const d = distance(k, c);
    if (d < bestD) [best, bestD] = [cand, d];
  }
  return best;
}

/** Levenshtein distance (two rows). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}
