/**
 * JSON Schemas of the HTTP API (/api/v1), shared by the server (validation, OpenAPI) and clients.
 */
export const imageName = { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' } as const;
export const versionNumber = { type: 'integer', minimum: 1, maximum: 2147483647 } as const;
export const chunkId = { type: 'string', pattern: '^[0-9a-f]{64}$' } as const;
export const refName = { type: 'string', minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]*$' } as const;
export const versionKind = { type: 'string', enum: ['import', 'publish', 'voi-commit', 'vdi-commit', 'rollback'] } as const;

export const errorBody = {
  type: 'object',
  properties: { code: { type: 'string' }, message: { type: 'string' } },
  required: ['code', 'message'],
  additionalProperties: true,
} as const;

export const imageParams = { type: 'object', properties: { image: imageName }, required: ['image'] } as const;
export const versionParams = { type: 'object', properties: { image: imageName, version: versionNumber }, required: ['image', 'version'] } as const;

export const createImageBody = {
  type: 'object',
  properties: {
    name: imageName,
    virtualSize: { type: 'integer', minimum: 512, maximum: 2 ** 50 },
    chunkSize: { type: 'integer', minimum: 4096, maximum: 4194304 },
  },
  required: ['name', 'virtualSize', 'chunkSize'],
  additionalProperties: false,
} as const;

export const commitBody = {
  type: 'object',
  properties: {
    parent: { anyOf: [versionNumber, { type: 'null' }] },
    ref: refName,
    layer: chunkId,
    kind: versionKind,
    message: { type: 'string', maxLength: 4000 },
    author: { type: 'string', minLength: 1, maxLength: 200 },
  },
  required: ['parent', 'ref', 'layer', 'kind'],
  additionalProperties: false,
} as const;

export const refSetBody = {
  type: 'object',
  properties: {
    version: versionNumber,
    expect: { anyOf: [versionNumber, { type: 'null' }] },
    reason: { type: 'string', maxLength: 400 },
  },
  required: ['version', 'expect'],
  additionalProperties: false,
} as const;

export const idsBody = {
  type: 'object',
  properties: { ids: { type: 'array', items: chunkId, maxItems: 1048576 } },
  required: ['ids'],
  additionalProperties: false,
} as const;

export const listQuery = {
  type: 'object',
  properties: { limit: { type: 'integer', minimum: 1, maximum: 10000, default: 100 }, ref: refName },
  additionalProperties: false,
} as const;

export const resolveQuery = {
  type: 'object',
  properties: { rev: { type: 'string', minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]*$' } },
  required: ['rev'],
  additionalProperties: false,
} as const;

export const versionSchema = {
  type: 'object',
  properties: {
    image: { type: 'string' }, version: { type: 'integer' }, parent: { type: ['integer', 'null'] },
    layer: { type: 'string' }, index: { type: 'string' }, kind: { type: 'string' }, author: { type: 'string' },
    message: { type: 'string' }, createdAt: { type: 'string' }, chunksChanged: { type: 'integer' }, chunksTotal: { type: 'integer' },
  },
} as const;

// Desktops, their tokens and leases (src/desktop/desktops.ts).
export const desktopName = imageName;
export const desktopParams = { type: 'object', properties: { name: desktopName }, required: ['name'] } as const;
const holder = { type: 'string', minLength: 1, maxLength: 200 } as const;

export const createDesktopBody = {
  type: 'object',
  properties: { name: desktopName, image: imageName, from: refName, mode: { type: 'string', enum: ['persistent', 'restore'] } },
  required: ['name', 'image'],
  additionalProperties: false,
} as const;

export const resetDesktopBody = { type: 'object', properties: { to: refName }, additionalProperties: false } as const;

export const desktopTokenBody = {
  type: 'object',
  properties: { ttlSeconds: { type: 'integer', minimum: 1, maximum: 365 * 86400 } },
  additionalProperties: false,
} as const;

export const leaseBody = {
  type: 'object',
  properties: { holder, ttlSeconds: { type: 'integer', minimum: 10, maximum: 86400 }, force: { type: 'boolean' } },
  required: ['holder'],
  additionalProperties: false,
} as const;

export const leaseReleaseQuery = {
  type: 'object',
  properties: { fencing: { type: 'integer', minimum: 1 } },
  required: ['fencing'],
  additionalProperties: false,
} as const;

export const desktopCommitBody = {
  type: 'object',
  properties: {
    parent: { anyOf: [versionNumber, { type: 'null' }] },
    layer: chunkId,
    kind: { type: 'string', enum: ['voi-commit', 'vdi-commit'] },
    fencing: { type: 'integer', minimum: 1 },
    message: { type: 'string', maxLength: 4000 },
    holder,
  },
  required: ['parent', 'layer', 'kind', 'fencing'],
  additionalProperties: false,
} as const;

// VDI sessions (src/vdi/sessions.ts).
export const vdiSessionId = { type: 'string', pattern: '^[0-9a-f]{10}$' } as const;
export const vdiSessionParams = { type: 'object', properties: { id: vdiSessionId }, required: ['id'] } as const;
export const createVdiSessionBody = {
  type: 'object',
  properties: { desktop: desktopName, force: { type: 'boolean' }, autoCommit: { type: 'boolean' } },
  required: ['desktop'],
  additionalProperties: false,
} as const;
export const listVdiSessionsQuery = {
  type: 'object',
  properties: { desktop: desktopName, all: { type: 'boolean' } },
  additionalProperties: false,
} as const;
/** Commit or discard through a server that does not own the session: `force` = its owner is dead (its heartbeat may still look fresh). */
export const endVdiSessionQuery = {
  type: 'object',
  properties: { force: { type: 'boolean' } },
  additionalProperties: false,
} as const;
