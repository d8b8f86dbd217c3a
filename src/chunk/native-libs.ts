import { createRequire } from 'node:module';

/**
 * The native hash and compression libraries, loaded on first use: a command that never hashes or
 * compresses starts without them, and the boot stage overlaps their loading (a second under TCG) with
 * its first request.
 */
const load = createRequire(import.meta.url);
let zstd: typeof import('zstd-napi') | undefined;
let blake: typeof import('@napi-rs/blake-hash') | undefined;

export const zstdLib = (): typeof import('zstd-napi') => (zstd ??= load('zstd-napi') as typeof import('zstd-napi'));
export const blakeLib = (): typeof import('@napi-rs/blake-hash') => (blake ??= load('@napi-rs/blake-hash') as typeof import('@napi-rs/blake-hash'));
