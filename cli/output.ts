import type { Io } from './args.js';

/** One JSON object with --json, else the human text. */
export function emit(io: Io, json: boolean, obj: unknown, text: () => string): void {
  io.out.write(json ? `${JSON.stringify(obj)}\n` : text());
}

export function table(rows: string[][]): string {
  if (!rows.length) return '';
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((x, c) => (c === r.length - 1 ? x : x.padEnd(w[c]!))).join('  ')).join('\n') + '\n';
}
