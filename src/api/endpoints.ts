import { Type, type Static } from '@sinclair/typebox';
import { BOOT_METHODS, ENDPOINT_MODES, ENDPOINT_STATES, type BootPhase } from '../endpoint/model.js';
import { ImageName, Nullable, StringEnum, Time } from './common.js';
import { ImageBoot } from './images.js';

/** Endpoints and their boot events (server/routes/endpoints.ts), the boot flow (server/routes/boot.ts). */

const PHASES = ['dhcp', 'tftp', 'script', 'kernel', 'initrd', 'agent', 'syncing', 'synced', 'committed', 'local', 'poweroff', 'enrol', 'error', 'refused'] as const satisfies readonly BootPhase[];
export const BootPhaseSchema = StringEnum<BootPhase>(PHASES);
/** The phases the agent reports (POST /boot/events); the rest the server records itself. */
export const REPORTABLE_PHASES = ['syncing', 'synced', 'committed', 'local', 'poweroff', 'error'] as const satisfies readonly BootPhase[];

export const EndpointParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, description: 'id, name or MAC' }) });

export const LastSync = Type.Object({
  result: StringEnum(['ok', 'error'] as const),
  action: Type.String(),
  at: Time,
  version: Type.Optional(Type.Integer()),
  seconds: Type.Optional(Type.Number()),
  bytes: Type.Optional(Type.Integer({ description: 'bytes the sync fetched or the commit uploaded' })),
  error: Type.Optional(Type.String()),
  phases: Type.Optional(Type.Record(Type.String(), Type.Number(), { description: 'seconds since the boot\'s DHCP request at which each phase was reached' })),
});

export const Endpoint = Type.Object({
  id: Type.String(),
  name: Type.String(),
  macs: Type.Array(Type.String()),
  uuid: Nullable(Type.String()),
  serial: Nullable(Type.String()),
  state: StringEnum(ENDPOINT_STATES),
  desktop: Nullable(Type.String()),
  mode: StringEnum(ENDPOINT_MODES),
  bootMethod: StringEnum(BOOT_METHODS),
  firmware: Nullable(StringEnum(['bios', 'uefi'] as const)),
  disk: StringEnum(['unknown', 'clean', 'in-use'] as const, { description: 'what the server last knew of the disk' }),
  diskVersion: Nullable(Type.Integer()),
  commitRequested: Nullable(Time),
  lastSeen: Nullable(Time),
  lastSync: Nullable(LastSync),
  createdAt: Time,
  secret: Type.Optional(StringEnum(['none', 'provisioning', 'bound'] as const, { description: "the disk secret's state (never the secret)" })),
});
export type Endpoint = Static<typeof Endpoint>;
export const EndpointList = Type.Object({ endpoints: Type.Array(Endpoint) });
export type EndpointList = Static<typeof EndpointList>;

export const BootEvent = Type.Object({
  seq: Type.Integer(),
  endpoint: Nullable(Type.String()),
  mac: Type.String(),
  phase: BootPhaseSchema,
  at: Time,
  detail: Type.Record(Type.String(), Type.Unknown()),
});
export type BootEvent = Static<typeof BootEvent>;
export const BootEventList = Type.Object({ events: Type.Array(BootEvent) });
export type BootEventList = Static<typeof BootEventList>;

/** An endpoint as shown: with its recent boot events. */
export const EndpointShow = Type.Composite([Endpoint, Type.Object({ events: Type.Array(BootEvent) })]);
export type EndpointShow = Static<typeof EndpointShow>;

const changeFields = {
  name: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  desktop: Type.Optional(Nullable(ImageName)),
  mode: Type.Optional(StringEnum(ENDPOINT_MODES)),
  bootMethod: Type.Optional(StringEnum(BOOT_METHODS)),
};
export const EndpointChangeBody = Type.Object(changeFields, { additionalProperties: false });
export type EndpointChangeBody = Static<typeof EndpointChangeBody>;
export const AddEndpointBody = Type.Object({ mac: Type.String({ maxLength: 64 }), ...changeFields }, { additionalProperties: false });
export type AddEndpointBody = Static<typeof AddEndpointBody>;

export const EventsQuery = Type.Object({
  endpoint: Type.Optional(Type.String({ maxLength: 64 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
});

// The boot flow (/boot: firmware and the boot stage, no admin token).

export const IpxeQuery = Type.Object({
  mac: Type.Optional(Type.String({ maxLength: 64 })),
  uuid: Type.Optional(Type.String({ maxLength: 64 })),
  serial: Type.Optional(Type.String({ maxLength: 128 })),
  buildarch: Type.Optional(Type.String({ maxLength: 32 })),
  platform: Type.Optional(Type.String({ maxLength: 32 })),
});
export const MacQuery = Type.Object({ mac: Type.Optional(Type.String({ maxLength: 64 })) });

/** Ed25519 public key and signature over this boot's MAC and token (src/endpoint/proof.ts). */
export const EndpointProof = Type.Object({
  key: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  sig: Type.String({ pattern: '^[0-9a-f]{128}$' }),
}, { additionalProperties: false });

export const SessionBody = Type.Object({
  token: Type.String({ minLength: 8, maxLength: 200 }),
  mac: Type.String({ maxLength: 64 }),
  platform: Type.Optional(Type.String({ maxLength: 32 })),
  proof: Type.Optional(EndpointProof),
  offer: Type.Optional(EndpointProof),
  /** What the boot stage's kernel says of Secure Boot: the firmware's SecureBoot variable and the lockdown mode. */
  secureBoot: Type.Optional(Type.Object({
    enabled: Type.Union([Type.Boolean(), Type.Null()]),
    lockdown: Type.Union([StringEnum(['none', 'integrity', 'confidentiality'] as const), Type.Null()]),
  }, { additionalProperties: false })),
}, { additionalProperties: false });
export type SessionBody = Static<typeof SessionBody>;

/** This boot's orders and its desktop token (POST /boot/session). */
export const BootSession = Type.Object({
  endpoint: Type.String(),
  name: Type.String(),
  mac: Type.String(),
  desktop: Type.String(),
  action: StringEnum(['sync', 'commit-poweroff', 'local'] as const),
  handoff: StringEnum(['reboot', 'kexec', 'bootnext', 'poweroff'] as const),
  token: Type.String({ description: 'desktop-scoped token for this boot\'s sync or commit' }),
  holder: Type.String({ description: 'the lease holder name the agent uses' }),
  imageBoot: Nullable(ImageBoot),
  reprovision: Type.Boolean({ description: 'rewrite the disk from scratch' }),
  assumeDirty: Type.Boolean({ description: 'scan the disk even if it says clean' }),
  provision: Type.Boolean({ description: 'this boot provisions the disk\'s secret' }),
});
export type BootSession = Static<typeof BootSession>;

export const BootEventBody = Type.Object({
  mac: Type.String({ maxLength: 64 }),
  phase: StringEnum(REPORTABLE_PHASES),
  detail: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
}, { additionalProperties: false });
export type BootEventBody = Static<typeof BootEventBody>;

/** The desktop OS at power-off (a form field, a JSON field or the query: the body may be absent, so it is checked by the route). */
export const CommitRequestBody = Type.Object({ mac: Type.Optional(Type.String({ maxLength: 64 })) });
export type CommitRequestBody = Static<typeof CommitRequestBody>;
export type MacQuery = Static<typeof MacQuery>;

export const KeepaliveBody = Type.Object({
  mac: Type.Optional(Type.String({ maxLength: 64 })),
  ttlSeconds: Type.Optional(Type.Union([Type.Integer({ minimum: 10, maximum: 86400 }), Type.String({ pattern: '^[0-9]{2,5}$' })])),
});
export type KeepaliveBody = Static<typeof KeepaliveBody>;
export const KeepaliveAnswer = Type.Object({ renewed: Type.Boolean(), desktop: Nullable(Type.String()), expiresAt: Nullable(Type.String()), reason: Type.String() });
export type KeepaliveAnswer = Static<typeof KeepaliveAnswer>;

export const CommitRequestAnswer = Type.Object({ action: StringEnum(['commit-poweroff', 'none'] as const), reason: Type.String() });
export type CommitRequestAnswer = Static<typeof CommitRequestAnswer>;
