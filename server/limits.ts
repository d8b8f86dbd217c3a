import { MAX_CHUNK_SIZE } from '../src/image/geometry.js';
import { PACK_MAX_BYTES } from '../src/chunk/pack.js';
import { PATCH_BODY_MAX } from '../src/sync/patch.js';

/**
 * Request body limits, each fitting its route's job (fastify answers 413 DF_ERR_TOO_LARGE above
 * them, before the body is read). Anything not named here takes BODY_DEFAULT; a layer upload takes
 * the configured `bodyLimit` (the largest layer a site's images need).
 */
const KiB = 1024;
const MiB = 1024 * KiB;

/** JSON of the admin and sync API (refs, commits, desktops, endpoints, VDI, chunk fetch lists). */
export const BODY_DEFAULT = 1 * MiB;

/** The anonymous boot routes: a MAC, a token, a platform. Events carry a short detail object. */
export const BODY_BOOT = 4 * KiB;
export const BODY_BOOT_EVENTS = 16 * KiB;

/** One chunk's frame: at most the zstd bound of the largest chunk (RFC 8878 blocks of 128 KiB, 3 bytes each) plus its header. */
export const BODY_CHUNK = MAX_CHUNK_SIZE + MAX_CHUNK_SIZE / 128 + 64 * KiB;

/** A pack upload (clients send about 8 MiB plus one chunk). */
export const BODY_PACK = PACK_MAX_BYTES;

/** A patch upload (its decoded records are held to PATCH_RAW_MAX on top of this, src/sync/patch.ts). */
export const BODY_PATCH = PATCH_BODY_MAX;

/** "Which of these are missing": up to 1,048,576 ids of 64 hex digits as JSON (src/api/chunks.ts IdsBody). */
export const BODY_MISSING = 1048576 * 67 + 64 * KiB;
