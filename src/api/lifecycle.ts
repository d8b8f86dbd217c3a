import { Type, type Static } from '@sinclair/typebox';
import { POLICY_RANGES } from '../image/retention.js';
import { Nullable, Time } from './common.js';

/** Retention policies, prune and deletes (server/routes/lifecycle.ts; src/image/lifecycle.ts says what they mean). */

const range = (k: keyof typeof POLICY_RANGES, description: string) => Type.Integer({ minimum: POLICY_RANGES[k][0], maximum: POLICY_RANGES[k][1], description });

export const RetentionPolicy = Type.Object({
  keepLast: range('keepLast', "the last N versions of each ref's line stay"),
  keepDays: range('keepDays', 'versions younger than this stay'),
  conflictDays: range('conflictDays', "a conflict's version stays at least this long"),
});
export type RetentionPolicy = Static<typeof RetentionPolicy>;

export const PolicyOverride = Type.Object({
  keepLast: Nullable(range('keepLast', 'null: the server default')),
  keepDays: Nullable(range('keepDays', 'null: the server default')),
  conflictDays: Nullable(range('conflictDays', 'null: the server default')),
});

/** A number sets the value, null returns it to the server's default, absent keeps it. */
export const PolicyBody = Type.Partial(PolicyOverride, { additionalProperties: false });
export type PolicyBody = Static<typeof PolicyBody>;

export const PolicyView = Type.Object({ image: Type.String(), override: PolicyOverride, effective: RetentionPolicy, defaults: RetentionPolicy });
export type PolicyView = Static<typeof PolicyView>;

export const PruneBody = Type.Object({ dryRun: Type.Optional(Type.Boolean({ default: false })) }, { additionalProperties: false });
export type PruneBody = Static<typeof PruneBody>;

export const ConflictStatus = Type.Object({
  ref: Type.String(), version: Type.Integer(), updatedAt: Time,
  resolved: Type.Boolean({ description: "its version is on a non-conflict ref's line" }),
  deleted: Type.Boolean({ description: 'resolved and older than conflictDays: the prune deletes the ref' }),
});

export const PruneReport = Type.Object({
  image: Type.String(),
  dryRun: Type.Boolean(),
  policy: RetentionPolicy,
  dropped: Type.Array(Type.Object({ version: Type.Integer(), parent: Nullable(Type.Integer()), createdAt: Time, landedRef: Nullable(Type.String()) })),
  kept: Type.Array(Type.Object({ version: Type.Integer(), why: Type.Array(Type.String()) })),
  conflicts: Type.Array(ConflictStatus),
  bytes: Type.Object({ layers: Type.Integer(), indexes: Type.Integer(), deltas: Type.Integer(), total: Type.Integer() }),
  chunks: Type.String(),
});
export type PruneReport = Static<typeof PruneReport>;

export const ForceQuery = Type.Object({ force: Type.Optional(Type.Boolean({ default: false, description: 'delete even though something live depends on it, undoing that' })) }, { additionalProperties: false });

export const RefDeleted = Type.Object({ image: Type.String(), ref: Type.String(), version: Type.Integer() });
export type RefDeleted = Static<typeof RefDeleted>;
export const DesktopDeleted = Type.Object({
  desktop: Type.String(), image: Type.String(), endpointsUnassigned: Type.Array(Type.String()), sessionsDiscarded: Type.Array(Type.String()), tokensRevoked: Type.Integer(),
});
export type DesktopDeleted = Static<typeof DesktopDeleted>;
export const EndpointDeleted = Type.Object({ id: Type.String(), name: Type.String() });
export type EndpointDeleted = Static<typeof EndpointDeleted>;
export const ImageDeleted = Type.Object({ image: Type.String(), versions: Type.Integer(), desktops: Type.Array(Type.String()), bytes: Type.Integer(), chunks: Type.String() });
export type ImageDeleted = Static<typeof ImageDeleted>;
