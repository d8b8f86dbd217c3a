import { Type, type Static } from '@sinclair/typebox';
import { DesktopMode } from './desktops.js';
import { DesktopName, Nullable, StringEnum, Time } from './common.js';

/** VDI sessions (server/routes/vdi.ts). */

export const VdiSessionId = Type.String({ pattern: '^[0-9a-f]{10}$' });
export const VdiSessionParams = Type.Object({ id: VdiSessionId });

export const VdiOutcome = Type.Object({
  kind: StringEnum(['fast-forward', 'conflict', 'unchanged', 'discarded'] as const),
  version: Nullable(Type.Integer()),
  ref: Nullable(Type.String()),
  conflictRef: Type.Optional(Type.String()),
  reason: Type.Optional(StringEnum(['parent', 'fencing'] as const)),
  chunksChanged: Type.Integer(),
  by: StringEnum(['disconnect', 'admin'] as const),
  seconds: Type.Number(),
});
export type VdiOutcome = Static<typeof VdiOutcome>;

export const VdiSession = Type.Object({
  id: Type.String(),
  desktop: Type.String(),
  image: Type.String(),
  base: Type.Integer({ description: 'the version the session started from' }),
  mode: DesktopMode,
  holder: Type.String(),
  fencing: Nullable(Type.Integer()),
  autoCommit: Type.Boolean(),
  state: StringEnum(['open', 'committing', 'committed', 'discarded', 'failed'] as const),
  createdAt: Time,
  createdBy: Type.String(),
  updatedAt: Time,
  lastConnectAt: Nullable(Time),
  lastDisconnectAt: Nullable(Time),
  lastDisconnect: Nullable(StringEnum(['clean', 'dropped'] as const)),
  outcome: Nullable(VdiOutcome),
  failure: Nullable(Type.String()),
  export: Type.String({ description: 'session/ID (a client adds :SECRET)' }),
  connections: Type.Integer(),
  increment: Type.Optional(Type.Object({
    changed: Type.Integer(),
    live: Nullable(Type.Object({ bytesWritten: Type.Integer(), flushes: Type.Integer(), lastFlushAt: Nullable(Time) })),
  })),
});
export type VdiSession = Static<typeof VdiSession>;
export const VdiSessionList = Type.Object({ sessions: Type.Array(VdiSession) });
export type VdiSessionList = Static<typeof VdiSessionList>;

/** A new session: the NBD URL carries its secret and is shown once (null while the NBD server is off). */
export const VdiSessionCreated = Type.Object({ session: VdiSession, export: Type.String(), url: Nullable(Type.String()) });
export type VdiSessionCreated = Static<typeof VdiSessionCreated>;

export const CreateVdiSessionBody = Type.Object({
  desktop: DesktopName,
  force: Type.Optional(Type.Boolean()),
  autoCommit: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
export type CreateVdiSessionBody = Static<typeof CreateVdiSessionBody>;

export const ListVdiSessionsQuery = Type.Object({
  desktop: Type.Optional(DesktopName),
  all: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
