/**
 * The HTTP API's contract (/api/v1 and /boot), written once as TypeBox schemas: fastify validates
 * requests and serializes answers with them, @fastify/swagger documents them (/api/v1/openapi.json),
 * and their `Static<>` types are what the server, the CLI and the agent exchange.
 */
export * from './common.js';
export * from './images.js';
export * from './desktops.js';
export * from './endpoints.js';
export * from './vdi.js';
export * from './tokens.js';
export * from './chunks.js';
export * from './lifecycle.js';
export * from './signed.js';
