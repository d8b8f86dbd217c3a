import type { TokenInfo, TokenRepo, TokenRow } from '../auth/model.js';
import type { Row, SqlEngine } from './sql.js';

/** Token hashes over either engine. */
const TOKEN_COLUMNS = 'hash, scope, created_at, expires_at, last_used_at';
const toTokenInfo = (r: Row): TokenInfo => ({
  id: (r.hash as string).slice(0, 16), scope: r.scope as string, createdAt: r.created_at as string,
  expiresAt: (r.expires_at as string | null) ?? null, lastUsedAt: (r.last_used_at as string | null) ?? null,
});

export class SqlTokenRepo implements TokenRepo {
  constructor(private readonly db: SqlEngine) {}

  async addToken(hash: string, scope: string, at: string, expiresAt: string | null = null): Promise<void> {
    await this.db.run('INSERT INTO tokens (hash, scope, created_at, expires_at) VALUES (?, ?, ?, ?)', [hash, scope, at, expiresAt]);
  }

  async findToken(hash: string): Promise<TokenRow | undefined> {
    const r = await this.db.get('SELECT scope, expires_at FROM tokens WHERE hash = ?', [hash]);
    return r && { scope: r.scope as string, expiresAt: (r.expires_at as string | null) ?? null };
  }

  async countTokens(scope: string): Promise<number> {
    return Number((await this.db.get('SELECT COUNT(*) AS n FROM tokens WHERE scope = ?', [scope]))!.n);
  }

  addTokenIfNone(hash: string, scope: string, at: string): Promise<boolean> {
    return this.db.tx(async (q) => {
      if (Number((await q.get('SELECT COUNT(*) AS n FROM tokens WHERE scope = ?', [scope]))!.n) > 0) return false;
      await q.run('INSERT INTO tokens (hash, scope, created_at, expires_at) VALUES (?, ?, ?, NULL)', [hash, scope, at]);
      return true;
    });
  }

  async touchToken(hash: string, at: string, since: string): Promise<void> {
    await this.db.run('UPDATE tokens SET last_used_at = ? WHERE hash = ? AND (last_used_at IS NULL OR last_used_at < ?)', [at, hash, since]);
  }

  async listTokens(): Promise<TokenInfo[]> {
    return (await this.db.all(`SELECT ${TOKEN_COLUMNS} FROM tokens ORDER BY created_at, hash`)).map(toTokenInfo);
  }

  deleteToken(id: string, keepLastAdmin?: string): Promise<TokenInfo | 'last-admin' | undefined> {
    return this.db.tx(async (q) => {
      const r = await q.get(`SELECT ${TOKEN_COLUMNS} FROM tokens WHERE substr(hash, 1, 16) = ?`, [id]);
      if (!r) return undefined;
      if (keepLastAdmin !== undefined && r.scope === 'admin') {
        const live = await q.get("SELECT COUNT(*) AS n FROM tokens WHERE scope = 'admin' AND (expires_at IS NULL OR expires_at > ?)", [keepLastAdmin]);
        const self = r.expires_at === null || (r.expires_at as string) > keepLastAdmin;
        if (self && Number(live!.n) <= 1) return 'last-admin';
      }
      await q.run('DELETE FROM tokens WHERE hash = ?', [r.hash as string]);
      return toTokenInfo(r);
    });
  }

  pruneTokens(before: string): Promise<number> {
    return this.db.run('DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at < ?', [before]);
  }
}
