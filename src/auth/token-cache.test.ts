import { describe, expect, it } from 'vitest';
import type { TokenInfo, TokenRepo, TokenRow } from './model.js';
import { cachedTokens } from './token-cache.js';

/** A token table in memory that counts the calls reaching it (the repository interface, not a mock of ours). */
function table() {
  const rows = new Map<string, TokenRow & { lastUsedAt: string | null }>();
  const calls = { find: 0, touch: 0 };
  const repo: TokenRepo = {
    async addToken(hash, scope, _at, expiresAt) { rows.set(hash, { scope, expiresAt: expiresAt ?? null, lastUsedAt: null }); },
    async addTokenIfNone(hash, scope) { if ([...rows.values()].some((r) => r.scope === scope)) return false; rows.set(hash, { scope, expiresAt: null, lastUsedAt: null }); return true; },
    async findToken(hash) { calls.find++; const r = rows.get(hash); return r && { scope: r.scope, expiresAt: r.expiresAt }; },
    async countTokens(scope) { return [...rows.values()].filter((r) => r.scope === scope).length; },
    async touchToken(hash, at, since) { calls.touch++; const r = rows.get(hash); if (r && (r.lastUsedAt === null || r.lastUsedAt < since)) r.lastUsedAt = at; },
    async listTokens() { return [] as TokenInfo[]; },
    async deleteToken(id) { const had = rows.delete(id); return had ? ({ id } as unknown as TokenInfo) : undefined; },
    async pruneTokens() { return 0; },
  };
  return { rows, calls, repo };
}

describe('token cache', () => {
  it('answers repeated lookups from memory for ttlMs, then asks the repository again', async () => {
    const t = table();
    let ms = 0;
    const c = cachedTokens(t.repo, { ttlMs: 5000, clock: () => ms });
    await t.repo.addToken('h1', 'desktop:a', '2026-01-01T00:00:00Z', null);
    for (let i = 0; i < 10; i++) expect(await c.findToken('h1')).toEqual({ scope: 'desktop:a', expiresAt: null });
    expect(t.calls.find).toBe(1);
    ms = 5001;
    await c.findToken('h1');
    expect(t.calls.find).toBe(2);
  });

  it('never remembers an unknown token', async () => {
    const t = table();
    const c = cachedTokens(t.repo, { clock: () => 0 });
    expect(await c.findToken('h2')).toBeUndefined();
    await t.repo.addToken('h2', 'admin', '2026-01-01T00:00:00Z', null); // minted meanwhile (another server)
    expect(await c.findToken('h2')).toEqual({ scope: 'admin', expiresAt: null });
  });

  it('forgets every token when one is deleted through it', async () => {
    const t = table();
    const c = cachedTokens(t.repo, { clock: () => 0 });
    await c.addToken('h3', 'admin', '2026-01-01T00:00:00Z', null);
    expect(await c.findToken('h3')).toBeDefined();
    await c.deleteToken('h3');
    expect(await c.findToken('h3')).toBeUndefined();
  });

  it('writes the "last used" note once per window, as the repository would', async () => {
    const t = table();
    const c = cachedTokens(t.repo, { clock: () => 0 });
    await c.addToken('h4', 'admin', '2026-01-01T00:00:00Z', null);
    await c.touchToken('h4', '2026-01-01T00:00:10Z', '2026-01-01T00:00:00Z');
    await c.touchToken('h4', '2026-01-01T00:00:20Z', '2026-01-01T00:00:05Z');
    await c.touchToken('h4', '2026-01-01T00:00:30Z', '2026-01-01T00:00:10Z');
    expect(t.calls.touch).toBe(1);
    expect(t.rows.get('h4')!.lastUsedAt).toBe('2026-01-01T00:00:10Z');
    await c.touchToken('h4', '2026-01-01T00:01:20Z', '2026-01-01T00:00:20Z'); // the window has passed
    expect(t.calls.touch).toBe(2);
    expect(t.rows.get('h4')!.lastUsedAt).toBe('2026-01-01T00:01:20Z');
  });
});
