import { Type, type Static } from '@sinclair/typebox';
import { VERSION_KINDS } from '../image/model.js';
import { ChunkId, ImageName, Nullable, RefName, StringEnum, Time, VersionNumber } from './common.js';

/** Images, versions, refs, layers and commits (server/routes/images.ts). */

export const VersionKind = StringEnum(VERSION_KINDS);
export type VersionKind = Static<typeof VersionKind>;

export const ImageParams = Type.Object({ image: ImageName });
export const VersionParams = Type.Object({ image: ImageName, version: VersionNumber });
/** A ref's name is the rest of the path: /images/:image/refs/desktops/alice. */
export const RefParams = Type.Object({ image: Type.String(), '*': RefName });

/** The Linux kernel the image boots (partition 1-based, paths on it), for the agent's kexec hand-off. */
export const ImageBoot = Type.Object({
  partition: Type.Integer({ minimum: 1, maximum: 128 }),
  kernel: Type.String({ pattern: '^/[^\\0]{1,255}$' }),
  initrd: Type.Optional(Type.String({ pattern: '^/[^\\0]{1,255}$' })),
  cmdline: Type.String({ maxLength: 2048 }),
}, { additionalProperties: false });
export type ImageBoot = Static<typeof ImageBoot>;

export const Image = Type.Object({
  name: Type.String(),
  virtualSize: Type.Integer(),
  chunkSize: Type.Integer(),
  hashAlg: Type.String(),
  createdAt: Time,
  boot: Type.Optional(ImageBoot),
});
export type Image = Static<typeof Image>;

export const Ref = Type.Object({ image: Type.String(), name: Type.String(), version: Type.Integer(), updatedAt: Time });
export type Ref = Static<typeof Ref>;

/** An image as shown and listed: its refs and (not to a desktop token) its version count. */
export const ImageShow = Type.Composite([Image, Type.Object({ refs: Type.Array(Ref), versions: Type.Optional(Type.Integer()) })]);
export type ImageShow = Static<typeof ImageShow>;
export const ImageList = Type.Object({ images: Type.Array(ImageShow) });
export type ImageList = Static<typeof ImageList>;

export const Version = Type.Object({
  image: Type.String(),
  version: Type.Integer(),
  parent: Nullable(Type.Integer()),
  layer: Type.String(),
  index: Type.String(),
  kind: VersionKind,
  author: Type.String(),
  message: Type.String(),
  createdAt: Time,
  chunksChanged: Type.Integer({ description: 'chunk positions the layer changes' }),
  chunksTotal: Type.Integer({ description: 'non-zero chunks in the whole version' }),
});
export type Version = Static<typeof Version>;
export const VersionList = Type.Object({ versions: Type.Array(Version) });
export type VersionList = Static<typeof VersionList>;

export const RefLogEntry = Type.Object({
  seq: Type.Integer(),
  image: Type.String(),
  ref: Type.String(),
  oldVersion: Nullable(Type.Integer()),
  newVersion: Type.Integer(),
  deleted: Type.Boolean({ description: 'the ref was deleted here (it pointed at oldVersion; newVersion repeats it)' }),
  reason: Type.String(),
  author: Type.String(),
  at: Time,
});
export type RefLogEntry = Static<typeof RefLogEntry>;
export const RefList = Type.Object({ refs: Type.Array(Ref) });
export type RefList = Static<typeof RefList>;
export const RefLog = Type.Object({ entries: Type.Array(RefLogEntry) });
export type RefLog = Static<typeof RefLog>;

export const CreateImageBody = Type.Object({
  name: ImageName,
  virtualSize: Type.Integer({ minimum: 512, maximum: 2 ** 50 }),
  chunkSize: Type.Integer({ minimum: 4096, maximum: 4194304 }),
}, { additionalProperties: false });
export type CreateImageBody = Static<typeof CreateImageBody>;

export const CommitBody = Type.Object({
  parent: Nullable(VersionNumber),
  ref: RefName,
  layer: ChunkId,
  kind: VersionKind,
  message: Type.Optional(Type.String({ maxLength: 4000 })),
  author: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  allowEmpty: Type.Optional(Type.Boolean({ description: 'a publish whose layer changes nothing makes a version anyway (default: it makes none, 200 unchanged)' })),
}, { additionalProperties: false });
export type CommitBody = Static<typeof CommitBody>;

export const RefSetBody = Type.Object({
  version: VersionNumber,
  expect: Nullable(VersionNumber),
  reason: Type.Optional(Type.String({ maxLength: 400 })),
}, { additionalProperties: false });
export type RefSetBody = Static<typeof RefSetBody>;

export const ListQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 10000, default: 100 }),
  ref: Type.Optional(RefName),
}, { additionalProperties: false });

export const ResolveQuery = Type.Object({ rev: RefName }, { additionalProperties: false });

/** A layer uploaded for a coming commit. */
export const StagedLayer = Type.Object({ layer: Type.String(), entries: Type.Integer() });
export type StagedLayer = Static<typeof StagedLayer>;

/** 201: the commit moved the ref. */
export const CommitAnswer = Type.Object({ outcome: Type.Literal('fast-forward'), version: Version, ref: Type.String() });
export type CommitAnswer = Static<typeof CommitAnswer>;

/** 200: a publish identical to its parent made no version (CommitBody.allowEmpty makes one); `version` is the parent, `head` the ref's. */
export const CommitUnchanged = Type.Object({ outcome: Type.Literal('unchanged'), version: Version, ref: Type.String(), head: Nullable(Type.Integer()) });
export type CommitUnchanged = Static<typeof CommitUnchanged>;

/** 409 DF_ERR_CONFLICT: the version is kept as `conflictRef`; the ref stays at `head`. */
export const CommitConflict = Type.Object({
  code: Type.Literal('DF_ERR_CONFLICT'),
  message: Type.String(),
  version: Version,
  ref: Type.String(),
  head: Nullable(Type.Integer()),
  conflictRef: Type.String(),
  reason: StringEnum(['parent', 'fencing'] as const),
});
export type CommitConflict = Static<typeof CommitConflict>;
