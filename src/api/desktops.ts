import { Type, type Static } from '@sinclair/typebox';
import { ChunkId, DesktopName, Holder, ImageName, Nullable, RefName, StringEnum, Time, VersionNumber } from './common.js';

/** Desktops, their tokens and leases, commits under a lease (server/routes/desktops.ts). */

export const DesktopMode = StringEnum(['persistent', 'restore'] as const);
export type DesktopMode = Static<typeof DesktopMode>;

export const DesktopParams = Type.Object({ name: DesktopName });

/** A desktop's current, unexpired lease. */
export const Lease = Type.Object({ desktop: Type.String(), holder: Type.String(), fencing: Type.Integer(), since: Time, expiresAt: Time });
export type Lease = Static<typeof Lease>;

/** The answer to taking a lease: the lease, and the live one it took over (`force`), if any. */
export const LeaseTaken = Type.Composite([Lease, Type.Object({ takenFrom: Nullable(Lease) })]);
export type LeaseTaken = Static<typeof LeaseTaken>;

export const Desktop = Type.Object({
  name: Type.String(),
  image: Type.String(),
  mode: DesktopMode,
  follows: Type.String({ description: 'the image ref the desktop was made from' }),
  ref: Nullable(Type.String({ description: 'desktops/NAME (persistent), null (restore)' })),
  head: Type.Integer({ description: 'the version a sync must reach' }),
  lease: Nullable(Lease),
  createdAt: Time,
});
export type Desktop = Static<typeof Desktop>;
export const DesktopList = Type.Object({ desktops: Type.Array(Desktop) });
export type DesktopList = Static<typeof DesktopList>;

/** A token scoped to one desktop: its secret is in this answer only. */
export const DesktopToken = Type.Object({ token: Type.String(), scope: Type.String(), expiresAt: Time });
export type DesktopToken = Static<typeof DesktopToken>;

export const LeaseReleased = Type.Object({ released: Type.Literal(true) });
export type LeaseReleased = Static<typeof LeaseReleased>;
export const LeaseBroken = Type.Object({ broken: Nullable(Lease) });
export type LeaseBroken = Static<typeof LeaseBroken>;

export const CreateDesktopBody = Type.Object({
  name: DesktopName,
  image: ImageName,
  from: Type.Optional(RefName),
  mode: Type.Optional(DesktopMode),
}, { additionalProperties: false });
export type CreateDesktopBody = Static<typeof CreateDesktopBody>;

export const ResetDesktopBody = Type.Object({
  to: Type.Optional(RefName),
  expect: Type.Optional(Nullable(VersionNumber)),
  force: Type.Optional(Type.Boolean({ description: 'reset even while an endpoint or VDI session holds the lease (its next commit is kept as a conflict)' })),
}, { additionalProperties: false });
export type ResetDesktopBody = Static<typeof ResetDesktopBody>;

/** A reset's answer: the desktop now, the head it dropped (kept in the ref log), the lease it overrode. */
export const DesktopReset = Type.Composite([Desktop, Type.Object({
  dropped: Nullable(Type.Integer({ description: 'the head before the reset (kept in the ref log)' })),
  /** The live lease a forced reset went past: its holder's next commit becomes a conflict. */
  overrode: Nullable(Lease),
})]);
export type DesktopReset = Static<typeof DesktopReset>;

export const DesktopTokenBody = Type.Object({
  ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 365 * 86400 })),
}, { additionalProperties: false });

export const LeaseBody = Type.Object({
  holder: Holder,
  ttlSeconds: Type.Optional(Type.Integer({ minimum: 10, maximum: 86400 })),
  force: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
export type LeaseBody = Static<typeof LeaseBody>;

export const LeaseReleaseQuery = Type.Object({ fencing: Type.Integer({ minimum: 1 }) }, { additionalProperties: false });

export const DesktopCommitBody = Type.Object({
  parent: Nullable(VersionNumber),
  layer: ChunkId,
  kind: StringEnum(['voi-commit', 'vdi-commit'] as const),
  /** The lease's fencing; 0: the committer holds no lease (another does): the version is kept as a conflict. */
  fencing: Type.Integer({ minimum: 0 }),
  message: Type.Optional(Type.String({ maxLength: 4000 })),
  holder: Type.Optional(Holder),
}, { additionalProperties: false });
export type DesktopCommitBody = Static<typeof DesktopCommitBody>;
