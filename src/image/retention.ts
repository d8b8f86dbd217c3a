import { dfError } from '../errors.js';
import type { RefRow } from './model.js';
import { isConflictRef } from './names.js';

/**
 * Retention of versions (issue 13): which versions of one image stay, which rows go. Pure: the
 * repository (src/meta/sql-retention.ts) gathers the facts and applies the plan in one transaction.
 *
 * A version stays when any of these holds (each kept version says why):
 *   root        a ref points at it; a desktop's head; the base of a VDI session not finished
 *               (open, committing, failed); the version an endpoint's disk records; the head of a
 *               desktop whose lease is live freezes its whole line (walking parents: an agent's
 *               in-flight commit names a parent on it)
 *   last N      one of the last `keepLast` versions of a ref's line (the head, its parent, …)
 *   young       made less than `keepDays` days ago
 *   conflict    a version first kept under `conflicts/…`, for `conflictDays` days after it was made
 *   newest      the image's highest version number (numbers are never reused: a disk's state area
 *               names its version by number)
 * Everything else goes (its row; the ref log keeps the fact it existed). A conflict ref is
 * *resolved* when its version is on the line of a non-conflict ref (someone reset or promoted to
 * it); a resolved conflict ref older than `conflictDays` is deleted with the prune. An unresolved one
 * stays, and is listed, until someone resolves or deletes it.
 *
 * Parent links may then name a version that is gone: a version's content is its full chunk index, so
 * nothing is lost; a sync across the gap fetches whole changed chunks instead of block deltas.
 */
export interface RetentionPolicy {
  keepLast: number;
  keepDays: number;
  conflictDays: number;
}

/** A per-image override: null fields take the server's default. */
export interface PolicyOverride {
  keepLast: number | null;
  keepDays: number | null;
  conflictDays: number | null;
}

export const POLICY_RANGES: Readonly<Record<keyof RetentionPolicy, [number, number]>> = {
  keepLast: [1, 1_000_000],
  keepDays: [0, 36_500],
  conflictDays: [0, 36_500],
};

export const DEFAULT_RETENTION_POLICY: RetentionPolicy = { keepLast: 10, keepDays: 14, conflictDays: 30 };

/** Every problem of a (partial) policy, for config load and API input alike. */
export function policyProblems(p: Partial<Record<keyof RetentionPolicy, unknown>>, prefix = ''): string[] {
  const out: string[] = [];
  for (const [k, [min, max]] of Object.entries(POLICY_RANGES)) {
    const v = p[k as keyof RetentionPolicy];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) out.push(`${prefix}${k}: expected an integer ${min}-${max}, got ${JSON.stringify(v)}`);
  }
  return out;
}

export function effectivePolicy(defaults: RetentionPolicy, o: PolicyOverride | undefined): RetentionPolicy {
  return {
    keepLast: o?.keepLast ?? defaults.keepLast,
    keepDays: o?.keepDays ?? defaults.keepDays,
    conflictDays: o?.conflictDays ?? defaults.conflictDays,
  };
}

export function checkOverride(o: PolicyOverride): PolicyOverride {
  const p = policyProblems(o);
  if (p.length) throw dfError('DF_ERR_BAD_REQUEST', `retention policy: ${p.join('; ')}`, { problems: p });
  return o;
}

/** What retention needs of a version row. */
export interface RetentionVersion {
  version: number;
  parent: number | null;
  createdAt: string;
  /** The ref the commit first landed on (`conflicts/…` for a conflict), null for old rows. */
  landedRef: string | null;
  layer: string;
  index: string;
}

export type RootKind = 'desktop' | 'lease' | 'vdi-session' | 'endpoint';

/** Something live that holds a version (refs are given apart). `line`: its whole line (walking parents) stays. */
export interface RetentionRoot {
  kind: RootKind;
  name: string;
  version: number;
  line?: boolean;
  detail?: string;
}

export interface RetentionInput {
  versions: readonly RetentionVersion[];
  refs: readonly RefRow[];
  roots: readonly RetentionRoot[];
  policy: RetentionPolicy;
  now: Date;
}

export interface ConflictStatus {
  ref: string;
  version: number;
  updatedAt: string;
  /** Its version is on the line of a non-conflict ref. */
  resolved: boolean;
  /** Resolved and older than conflictDays: the prune deletes the ref. */
  deleted: boolean;
}

export interface RetentionPlan {
  policy: RetentionPolicy;
  /** Kept versions, newest first, each with every reason it is kept. */
  keep: Array<{ version: number; why: string[] }>;
  /** Versions whose rows go, newest first. */
  drop: RetentionVersion[];
  conflicts: ConflictStatus[];
}

const DAY_MS = 86_400_000;

export function planRetention(input: RetentionInput): RetentionPlan {
  const { policy, now } = input;
  const byNum = new Map(input.versions.map((v) => [v.version, v]));
  const why = new Map<number, string[]>();
  const keep = (v: number, reason: string) => {
    if (!byNum.has(v)) return;
    const list = why.get(v);
    if (list) { if (!list.includes(reason)) list.push(reason); } else why.set(v, [reason]);
  };
  /** The line from `head` walking parents, at most `limit` versions (stops at a gap). */
  const line = (head: number, limit: number): number[] => {
    const out: number[] = [];
    const seen = new Set<number>();
    for (let v = byNum.get(head); v && out.length < limit && !seen.has(v.version); v = v.parent === null ? undefined : byNum.get(v.parent)) {
      seen.add(v.version);
      out.push(v.version);
    }
    return out;
  };

  // Conflict refs: resolved when on the line of a non-conflict ref; resolved and old → deleted now.
  const plainHeads = input.refs.filter((r) => !isConflictRef(r.name)).map((r) => r.version);
  const onPlainLine = new Set<number>(plainHeads.flatMap((h) => line(h, Number.MAX_SAFE_INTEGER)));
  const conflictCutoff = now.getTime() - policy.conflictDays * DAY_MS;
  const conflicts: ConflictStatus[] = input.refs.filter((r) => isConflictRef(r.name)).map((r) => {
    const resolved = onPlainLine.has(r.version);
    return { ref: r.name, version: r.version, updatedAt: r.updatedAt, resolved, deleted: resolved && Date.parse(r.updatedAt) < conflictCutoff };
  });
  const deletedRefs = new Set(conflicts.filter((c) => c.deleted).map((c) => c.ref));

  for (const r of input.refs) {
    if (deletedRefs.has(r.name)) continue;
    keep(r.version, `ref ${r.name}`);
    for (const v of line(r.version, policy.keepLast)) keep(v, `last ${policy.keepLast} of ${r.name}`);
  }
  for (const root of input.roots) {
    const label = `${root.kind} ${root.name}${root.detail ? ` (${root.detail})` : ''}`;
    keep(root.version, label);
    if (root.line) for (const v of line(root.version, Number.MAX_SAFE_INTEGER)) keep(v, `line of ${label}`);
  }
  const youngCutoff = now.getTime() - policy.keepDays * DAY_MS;
  let newest = 0;
  for (const v of input.versions) {
    newest = Math.max(newest, v.version);
    const t = Date.parse(v.createdAt);
    if (!(t < youngCutoff)) keep(v.version, `younger than ${policy.keepDays} days`);
    if (v.landedRef !== null && isConflictRef(v.landedRef) && !(t < conflictCutoff)) keep(v.version, `conflict younger than ${policy.conflictDays} days`);
  }
  if (newest > 0) keep(newest, 'newest version number (never reused)');

  const sorted = [...input.versions].sort((a, b) => b.version - a.version);
  return {
    policy,
    keep: sorted.filter((v) => why.has(v.version)).map((v) => ({ version: v.version, why: why.get(v.version)! })),
    drop: sorted.filter((v) => !why.has(v.version)),
    conflicts,
  };
}

/** Something live that a delete would break: it refuses, naming each (unless forced, where that is allowed). */
export interface Dependent {
  kind: 'lease' | 'vdi-session' | 'endpoint' | 'desktop' | 'conflict';
  name: string;
  detail: string;
}

/** What a prune did (or, dry, would do): the plan, and the blobs (layers, indexes) and deltas no remaining version names. */
export interface PruneOutcome {
  plan: RetentionPlan;
  dryRun: boolean;
  /** Layer and index ids of dropped versions that no remaining version (of any image) names. */
  freedBlobs: string[];
  /** Of those, the layer ids: their deltas go with them. */
  freedLayers: string[];
}

export type DeleteOutcome<T> =
  | ({ kind: 'deleted' } & T)
  | { kind: 'not-found' }
  /** `forceable`: --force would delete anyway (and undo what depends); else the dependents must go first. */
  | { kind: 'in-use'; dependents: Dependent[]; forceable: boolean };

export interface DeleteOpts {
  force: boolean;
  author: string;
  at: string;
}

/**
 * The lifecycle's state changes, each one transaction (src/meta/sql-lifecycle.ts, both engines). A
 * delete re-checks its dependents in the transaction that deletes, so a lease taken meanwhile wins.
 */
export interface LifecycleRepo {
  getPolicy(image: string): Promise<PolicyOverride | undefined>;
  /** Set (all-null: clear) an image's override. */
  setPolicy(image: string, o: PolicyOverride, at: string): Promise<void>;
  /** Plan and (unless dry) apply retention to one image, in one transaction; undefined: no such image. */
  prune(image: string, defaults: RetentionPolicy, now: Date, opts: { dryRun: boolean; author: string }): Promise<PruneOutcome | undefined>;
  /** A ref goes (the ref log records the deletion). Refused when a desktop's line is it (never forceable) or, for an unresolved conflict ref, unless forced. */
  deleteRef(image: string, name: string, o: DeleteOpts): Promise<DeleteOutcome<{ version: number }>>;
  /** A desktop, its lease, its ref, its tokens; forced: its endpoints are unassigned and its unfinished VDI sessions marked discarded. */
  deleteDesktop(name: string, o: DeleteOpts): Promise<DeleteOutcome<{ image: string; endpointsUnassigned: string[]; sessionsDiscarded: string[]; tokensRevoked: number }>>;
  /** An endpoint (by id or name), its MACs, keys, address and boot tokens (its boot events stay). */
  deleteEndpoint(key: string, o: DeleteOpts): Promise<DeleteOutcome<{ id: string; name: string }>>;
  /** An image, its refs, versions and policy (the ref log stays); forced: its desktops first. */
  deleteImage(name: string, o: DeleteOpts): Promise<DeleteOutcome<{ versions: number; desktops: string[]; freedBlobs: string[]; freedLayers: string[] }>>;
}
