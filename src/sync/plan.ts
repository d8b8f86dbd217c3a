import { idHex, isZeroId } from '../chunk/id.js';
import type { ChunkIndex } from '../image/chunk-index.js';

/**
 * The sync planner (pure): what to do at each chunk position to turn what the disk holds into the
 * target version, in disk order.
 *   zero  — the target chunk is all zero: write zeros
 *   patch — the disk holds the base version's chunk and a delta path base → target exists:
 *           rebuild from the changed 4 KiB blocks
 *   fetch — anything else: fetch the whole chunk
 */
export type OpKind = 'zero' | 'patch' | 'fetch';

export interface Op {
  pos: number;
  kind: OpKind;
  /** Target chunk id (hex); '' for zero. */
  id: string;
}

export interface PlanInput {
  /** What the disk holds now (scanned, or the state area's index when sealed clean). */
  actual: ChunkIndex;
  target: ChunkIndex;
  /** The version the deltas start from (null: no delta path, or all zeros for a blank disk). */
  base: ChunkIndex | null;
  /** A delta path base → target is available. */
  deltas: boolean;
}

export function plan(p: PlanInput): Op[] {
  const ops: Op[] = [];
  for (let pos = 0; pos < p.target.count; pos++) {
    const want = p.target.idAt(pos);
    const have = p.actual.idAt(pos);
    if (want.equals(have)) continue;
    if (isZeroId(want)) ops.push({ pos, kind: 'zero', id: '' });
    else if (p.deltas && p.base && have.equals(p.base.idAt(pos))) ops.push({ pos, kind: 'patch', id: idHex(want) });
    else ops.push({ pos, kind: 'fetch', id: idHex(want) });
  }
  return ops;
}
