/**
 * The version graph as lanes, newest first (as `git log --graph` draws it): pure, so the console's
 * picture of an image's lines is tested without a browser.
 *
 * Walking versions from the newest, each lane waits for one version (the parent of the last version
 * drawn in it). A version no lane waits for starts a new lane (a head: a ref, or a conflict); a
 * version several lanes wait for is where they fork (every lane but its own ends there).
 */
export interface GraphRow {
  version: number;
  lane: number;
  /** What each lane waits for above this row (null: free). */
  above: (number | null)[];
  /** And below it. */
  below: (number | null)[];
}

export function layoutGraph(versions: readonly { version: number; parent: number | null }[]): { rows: GraphRow[]; width: number } {
  const sorted = [...versions].sort((a, b) => b.version - a.version);
  let lanes: (number | null)[] = [];
  let width = 0;
  const rows: GraphRow[] = [];
  for (const v of sorted) {
    const above = lanes.slice();
    let lane = lanes.indexOf(v.version);
    if (lane < 0) {
      lane = lanes.indexOf(null);
      if (lane < 0) lane = lanes.push(null) - 1;
    }
    const below = lanes.map((w) => (w === v.version ? null : w));
    below[lane] = v.parent;
    while (below.length && below[below.length - 1] === null) below.pop();
    width = Math.max(width, above.length, below.length, lane + 1);
    rows.push({ version: v.version, lane, above, below });
    lanes = below;
  }
  return { rows, width };
}

const W = 14;
const H = 28;
const x = (lane: number) => 8 + lane * W;

/** One row's SVG (lines above and below the version's dot). `kind` colours the dot. */
export function rowSvg(r: GraphRow, width: number, o: { conflict: boolean; head: boolean }): string {
  const lines: string[] = [];
  const mid = H / 2;
  r.above.forEach((w, i) => {
    if (w === null) return;
    if (w === r.version) lines.push(`<line x1="${x(i)}" y1="0" x2="${x(r.lane)}" y2="${mid}"/>`);
    else lines.push(`<line x1="${x(i)}" y1="0" x2="${x(i)}" y2="${mid}"/>`);
  });
  r.below.forEach((w, i) => {
    if (w === null) return;
    lines.push(`<line x1="${i === r.lane ? x(r.lane) : x(i)}" y1="${mid}" x2="${x(i)}" y2="${H}"/>`);
  });
  const cls = o.conflict ? 'dot conflict' : o.head ? 'dot head' : 'dot';
  return `<svg class="graph" width="${x(Math.max(width, 1) - 1) + 8}" height="${H}" aria-hidden="true" focusable="false">${lines.join('')}<circle class="${cls}" cx="${x(r.lane)}" cy="${mid}" r="5"/></svg>`;
}
