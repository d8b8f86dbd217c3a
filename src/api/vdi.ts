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
  server: Type.String({ description: "the server hosting the session's NBD export and cloud increment" }),
  nbdHost: Nullable(Type.String()),
  nbdPort: Nullable(Type.Integer()),
  heartbeatAt: Nullable(Time),
  checkpointLayer: Nullable(Type.String()),
  checkpointAt: Nullable(Time),
  export: Type.String({ description: 'session/ID (a client adds :SECRET)' }),
  url: Nullable(Type.String({ description: 'nbd://OWNER:PORT/session/ID (nbds:// when NBD speaks TLS) on the owning server (a client appends :SECRET); null without NBD' })),
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

/** commit/discard through a server that does not own the session: force = its owner is dead. */
export const EndVdiSessionQuery = Type.Object({ force: Type.Optional(Type.Boolean()) }, { additionalProperties: false });
export type EndVdiSessionQuery = Static<typeof EndVdiSessionQuery>;

export const ListVdiSessionsQuery = Type.Object({
  desktop: Type.Optional(DesktopName),
  all: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
