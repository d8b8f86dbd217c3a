/**
 * The one error table. Every error deskfuse raises on purpose is a DeskfuseError with a stable
 * `code` (callers branch on it), an HTTP status (the server maps it), structured `fields` and an
 * optional `cause`. Messages are for people; codes and fields are for programs.
 */
export const ERRORS = {
  DF_ERR_INTERNAL: { status: 500, message: 'internal error' },
  DF_ERR_BAD_REQUEST: { status: 400, message: 'the request is malformed' },
  DF_ERR_UNAUTHORIZED: { status: 401, message: 'a valid token is required' },
  DF_ERR_TOKEN_EXPIRED: { status: 401, message: 'the token has expired' },
  DF_ERR_FORBIDDEN: { status: 403, message: "the token's scope does not allow this" },
  DF_ERR_NOT_FOUND: { status: 404, message: 'no such resource' },
  DF_ERR_CONFIG: { status: 500, message: 'the configuration is invalid' },
  DF_ERR_LISTEN: { status: 500, message: 'a listen address cannot be bound' },
  DF_ERR_USAGE: { status: 400, message: 'invalid command-line usage' },
  DF_ERR_CHUNK_INVALID: { status: 400, message: 'chunk bytes do not match the chunk id' },
  DF_ERR_CHUNK_NOT_FOUND: { status: 404, message: 'chunk not found' },
  DF_ERR_CHUNK_CORRUPT: { status: 500, message: 'a stored chunk is corrupt' },
  DF_ERR_DECODE: { status: 400, message: 'malformed binary data' },
  DF_ERR_IMAGE_NOT_FOUND: { status: 404, message: 'no such image' },
  DF_ERR_IMAGE_EXISTS: { status: 409, message: 'the image already exists' },
  DF_ERR_GEOMETRY: { status: 400, message: 'virtual size or chunk size is invalid' },
  DF_ERR_SIZE_MISMATCH: { status: 400, message: "the disk's virtual size differs from the image's" },
  DF_ERR_VERSION_NOT_FOUND: { status: 404, message: 'no such version' },
  DF_ERR_REF_NOT_FOUND: { status: 404, message: 'no such ref' },
  DF_ERR_REF_NAME: { status: 400, message: 'invalid ref name' },
  DF_ERR_REF_MOVED: { status: 409, message: 'the ref is not at the expected version' },
  DF_ERR_CONFLICT: { status: 409, message: "the commit's parent is not the ref's head (or its lease is stale); the version is kept as a conflict" },
  DF_ERR_CHUNKS_MISSING: { status: 409, message: 'the server lacks chunks the commit needs' },
  DF_ERR_GC_UNSAFE: { status: 409, message: 'garbage collection refused: a root cannot be read (run store verify)' },
  DF_ERR_GC_RUNNING: { status: 409, message: 'a garbage collection is already running' },
  DF_ERR_LAYER_NOT_FOUND: { status: 409, message: 'the layer was not uploaded' },
  DF_ERR_DESKTOP_NOT_FOUND: { status: 404, message: 'no such desktop' },
  DF_ERR_DESKTOP_EXISTS: { status: 409, message: 'the desktop already exists' },
  DF_ERR_RESTORE_MODE: { status: 400, message: 'a restore-mode desktop has no line of its own' },
  DF_ERR_LEASE_HELD: { status: 409, message: 'the desktop is leased by another holder' },
  DF_ERR_LEASE_LOST: { status: 409, message: 'the lease is no longer the current one' },
  DF_ERR_NOT_A_DISK: { status: 400, message: 'the file is not a disk image' },
  DF_ERR_FILE_UNREADABLE: { status: 400, message: 'the file cannot be read' },
  DF_ERR_FILE_EXISTS: { status: 409, message: 'the output file exists: nothing was written (--force replaces it)' },
  DF_ERR_OUTPUT_DIR: { status: 400, message: "the output file's directory does not exist or is not a directory: nothing was written" },
  DF_ERR_TOOL_MISSING: { status: 500, message: 'a required program is not installed' },
  DF_ERR_TOOL_FAILED: { status: 500, message: 'an external program failed' },
  DF_ERR_HTTP: { status: 502, message: 'the server answered with an error' },
  DF_ERR_UNREACHABLE: { status: 503, message: 'the server cannot be reached' },
  DF_ERR_BUSY: { status: 503, message: 'the server is serving as many transfers as it is configured to: retry after the time it says' },
  DF_ERR_DISK_TOO_SMALL: { status: 400, message: 'the disk is smaller than the image plus its state area' },
  DF_ERR_DISK_FOREIGN: { status: 400, message: "the disk's state area belongs to another image or desktop" },
  DF_ERR_DISK_BLANK: { status: 400, message: 'the disk has no deskfuse state: sync it first' },
  DF_ERR_APPLY_PENDING: { status: 409, message: 'an interrupted sync must finish first' },
  DF_ERR_STATE_CORRUPT: { status: 500, message: "the disk's state area is corrupt" },
  DF_ERR_ERA_METADATA: { status: 500, message: 'the dm-era metadata on the disk cannot be read' },
  DF_ERR_ENDPOINT_NOT_FOUND: { status: 404, message: 'no such endpoint' },
  DF_ERR_ENDPOINT_STATE: { status: 409, message: 'the endpoint is not in a state that allows this' },
  DF_ERR_BOOT_TOKEN_USED: { status: 401, message: 'the boot token was already used' },
  DF_ERR_BOOT_TOKEN_MAC: { status: 403, message: 'the boot token belongs to another endpoint' },
  DF_ERR_BOOT_FILES_MISSING: { status: 503, message: 'the boot stage (kernel and initramfs) is not built' },
  DF_ERR_BOOT_STAGE_CHANGED: { status: 404, message: 'the boot stage changed since this URL was given: ask /boot/ipxe again' },
  DF_ERR_STORE_VERIFY: { status: 500, message: 'the store has missing or corrupt chunks' },
  DF_ERR_NATIVE_MISSING: { status: 500, message: 'the native addon is not built' },
  DF_ERR_NBD_EXPORT_UNKNOWN: { status: 404, message: 'no such NBD export' },
  DF_ERR_VDI_SESSION_NOT_FOUND: { status: 404, message: 'no such VDI session' },
  DF_ERR_VDI_SESSION_STATE: { status: 409, message: 'the VDI session is not in a state that allows this' },
  DF_ERR_VDI_SESSION_BUSY: { status: 409, message: 'a client is connected to the VDI session' },
  DF_ERR_ENDPOINT_SECRET: { status: 403, message: "the boot did not prove the endpoint's disk secret" },
  DF_ERR_DISK_UNKNOWN_DATA: { status: 409, message: 'the disk holds data but no deskfuse state: it is not overwritten unless reprovisioned' },
  DF_ERR_NO_SPACE: { status: 507, message: "the server's store is full" },
  DF_ERR_STORE_IO: { status: 500, message: "the server's store failed a read, write or sync" },
  DF_ERR_VDI_SESSION_FAILED: { status: 409, message: 'the VDI session failed: writes since its last good flush may be lost' },
  DF_ERR_DISK_FULL: { status: 500, message: "the endpoint's disk is full" },
  DF_ERR_DISK_IO: { status: 500, message: "the endpoint's disk failed a read, write or sync" },
  DF_ERR_TOKEN_NOT_FOUND: { status: 404, message: 'no token with this id' },
  DF_ERR_LAST_ADMIN_TOKEN: { status: 409, message: 'the last admin token cannot be revoked' },
  DF_ERR_TOO_LARGE: { status: 413, message: 'the request, or what it decodes or asks for, is larger than this route takes' },
  DF_ERR_S3_UNREACHABLE: { status: 503, message: "the S3 store's endpoint did not answer" },
  DF_ERR_S3_DENIED: { status: 500, message: 'the S3 store refused the credentials' },
  DF_ERR_S3_NO_BUCKET: { status: 500, message: "the S3 store's bucket does not exist" },
  DF_ERR_S3: { status: 502, message: 'the S3 store answered with an error' },
  DF_ERR_META_UNREACHABLE: { status: 503, message: 'the metadata database cannot be reached' },
  DF_ERR_META_DENIED: { status: 500, message: 'the metadata database refused the credentials' },
  DF_ERR_META_SCHEMA: { status: 500, message: "the metadata database's schema is newer than this server" },
  DF_ERR_META: { status: 500, message: 'the metadata database failed a query' },
  DF_ERR_MIGRATE_VERIFY: { status: 500, message: 'the migrated install differs from its source' },
  DF_ERR_VDI_SESSION_ELSEWHERE: { status: 409, message: 'the VDI session lives on another server' },
  DF_ERR_IN_USE: { status: 409, message: 'something live depends on it: nothing was deleted (--force deletes it anyway and undoes what depends on it)' },
  DF_ERR_REF_IN_USE: { status: 409, message: "a desktop's line is this ref: delete or change the desktop first" },
  DF_ERR_MIGRATE_NOT_EMPTY: { status: 409, message: "the migration's destination database holds another install's data" },
  // TLS (server/tls.ts, src/api/tls-pin.ts)
  DF_ERR_TLS_REQUIRED: { status: 403, message: 'this request carries a secret: send it over HTTPS' },
  DF_ERR_TLS_PIN: { status: 502, message: "the server's certificate chain does not hold the pinned CA: nothing was sent" },
  DF_ERR_TLS_UNTRUSTED: { status: 502, message: "the server's certificate is not trusted: pin its CA (--ca FILE or --ca-fingerprint)" },
  // Signed versions (src/sign/): the endpoint refuses what the server's key does not vouch for.
  DF_ERR_SIG_MISSING: { status: 502, message: 'the server sent no signature for the version to sync to' },
  DF_ERR_SIG_INVALID: { status: 502, message: 'a signature does not verify' },
  DF_ERR_SIG_UNKNOWN_KEY: { status: 502, message: 'the version is signed by a key the endpoint does not trust' },
  DF_ERR_SIG_MISMATCH: { status: 502, message: 'what the server sent does not match its signed manifest' },
  DF_ERR_SIG_DOWNGRADE: { status: 502, message: 'the version is older than the disk holds and no signed admin rollback allows it' },
  DF_ERR_SIG_STALE: { status: 502, message: "the signed head's freshness stamp is too old (a frozen or replayed answer)" },
  DF_ERR_SIG_KEY: { status: 500, message: "the server's signing key cannot be read or made" },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

export class DeskfuseError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly fields: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message?: string, fields: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message ?? ERRORS[code].message, options);
    this.name = 'DeskfuseError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.fields = Object.freeze({ ...fields });
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.fields };
  }
}

export function dfError(code: ErrorCode, message?: string, fields?: Record<string, unknown>, cause?: unknown): DeskfuseError {
  return new DeskfuseError(code, message, fields, cause === undefined ? undefined : { cause });
}

export function isDeskfuseError(err: unknown, code?: ErrorCode): err is DeskfuseError {
  return err instanceof DeskfuseError && (code === undefined || err.code === code);
}
