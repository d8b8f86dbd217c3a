import type { TokenRepo, TokenRow } from './model.js';

/**
 * A server's short memory of token lookups, in front of the metadata repository: every request
 * authenticates, and on PostgreSQL that was two round trips a request (the lookup, and the
 * "last used" note a minute) before the route's own queries.
 *
 * - A token found is remembered for `ttlMs` (default 5 s; `expiresAt` is still checked on every
 *   request, so an expiry is exact). Unknown tokens are never remembered (a token just minted on
 *   another server works at once).
 * - A token deleted through this server (token delete, prune) is forgotten at once: any deletion
 *   clears the memory. A token deleted through ANOTHER server on the same database stays usable here
 *   for at most `ttlMs` (README "Scale out").
 * - The "last used" note: this server writes it at most once per `since` window per token
 *   (the repository's own condition decides across servers).
 * Bounded: at most `max` entries each (cleared when full; a miss only costs a lookup).
 */
export interface TokenCacheOptions {
  ttlMs?: number;
  max?: number;
  /** Milliseconds, monotonic (tests pass their own). */
  clock?: () => number;
}

export const TOKEN_CACHE_TTL_MS = 5_000;

export function cachedTokens(repo: TokenRepo, opts: TokenCacheOptions = {}): TokenRepo {
  const ttl = opts.ttlMs ?? TOKEN_CACHE_TTL_MS;
  const max = opts.max ?? 10_000;
  const clock = opts.clock ?? (() => performance.now());
  const found = new Map<string, { row: TokenRow; until: number }>();
  const touched = new Map<string, string>(); // hash → the `at` this server last noted
  let generation = 0; // bumped by every deletion: a lookup in flight across one is not remembered
  const forgetAll = () => { generation++; found.clear(); touched.clear(); };
  return {
    addToken: (hash, scope, at, expiresAt) => repo.addToken(hash, scope, at, expiresAt),
    addTokenIfNone: (hash, scope, at) => repo.addTokenIfNone(hash, scope, at),
    async findToken(hash) {
      const c = found.get(hash);
      if (c && c.until > clock()) {
        return c.row;
      }
      const gen = generation;
      const row = await repo.findToken(hash);
      if (row && gen === generation) {
        if (found.size >= max) found.clear();
        found.set(hash, { row, until: clock() + ttl });
      } else found.delete(hash);
      return row;
    },
    countTokens: (scope) => repo.countTokens(scope),
    async touchToken(hash, at, since) {
      const last = touched.get(hash);
      if (last !== undefined && last >= since) return; // noted by this server within the window
      await repo.touchToken(hash, at, since);
      if (touched.size >= max) touched.clear();
      touched.set(hash, at);
    },
    listTokens: () => repo.listTokens(),
    async deleteToken(id, keepLastAdmin) {
      forgetAll();
      try {
        return await repo.deleteToken(id, keepLastAdmin);
      } finally {
        forgetAll();
      }
    },
    async pruneTokens(before) {
      forgetAll();
      try {
        return await repo.pruneTokens(before);
      } finally {
        forgetAll();
      }
    },
  };
}
