import type { FastifySchema, RouteOptions } from 'fastify';
import { ErrorBody } from '../src/api/common.js';
import { PACK_CONTENT_TYPE } from '../src/chunk/pack.js';

/**
 * What the OpenAPI document says each route answers (@fastify/swagger's `transform`: the document
 * only; validation and serialization keep the routes' own schemas). Every route gets the error
 * shape for 4xx and 5xx, and the routes that answer bytes (no JSON schema) their media type.
 */
const BINARY: Record<string, { type: string; description: string }> = {
  '/chunks/:id': { type: 'application/zstd', description: 'the chunk as a zstd frame (immutable)' },
  '/api/v1/chunks/fetch': { type: PACK_CONTENT_TYPE, description: 'the asked chunks as a pack (src/chunk/pack.ts)' },
  '/api/v1/images/:image/versions/:version/delta': { type: 'application/vnd.deskfuse.delta', description: "the version's changed 4 KiB blocks against its parent (src/sync/delta.ts)" },
  '/api/v1/images/:image/versions/:version/layer': { type: 'application/vnd.deskfuse.layer', description: "the version's layer (src/image/layer.ts)" },
  '/api/v1/images/:image/versions/:version/index': { type: 'application/vnd.deskfuse.index', description: "the version's full chunk index" },
  '/boot/ipxe': { type: 'text/plain', description: 'the iPXE script for this endpoint' },
  '/boot/vmlinuz': { type: 'application/octet-stream', description: "the boot stage's kernel" },
  '/boot/initrd.img': { type: 'application/octet-stream', description: "the boot stage's initramfs" },
  '/boot/stage/:hash/vmlinuz': { type: 'application/octet-stream', description: "the boot stage's kernel, by content hash (immutable)" },
  '/boot/stage/:hash/initrd.img': { type: 'application/octet-stream', description: "the boot stage's initramfs, by content hash (immutable)" },
  '/boot/trust.cpio': { type: 'application/octet-stream', description: "the trust initrd: the server's version-signing keys (newc cpio)" },
  '/boot/trust/:hash/trust.cpio': { type: 'application/octet-stream', description: 'the trust initrd, by content hash (immutable)' },
};

const ERROR_RESPONSE = { ...ErrorBody, description: 'an error: {code: "DF_ERR_…", message, …its fields} (src/errors.ts)' };

export function documentResponses({ schema, url }: { schema: FastifySchema | undefined; url: string; route: RouteOptions }): { schema: FastifySchema; url: string } {
  const s = (schema ?? {}) as FastifySchema & { hide?: boolean };
  if (s.hide) return { schema: s, url };
  const response: Record<string, unknown> = { ...((s.response ?? {}) as Record<string, unknown>) };
  const binary = BINARY[url];
  if (binary && !Object.keys(response).some((c) => c.startsWith('2'))) {
    response['200'] = { description: binary.description, content: { [binary.type]: { schema: { type: 'string', format: 'binary' } } } };
  }
  response['4xx'] ??= ERROR_RESPONSE;
  response['5xx'] ??= ERROR_RESPONSE;
  return { schema: { ...s, response }, url };
}
