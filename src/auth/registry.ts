import { desktopScope, scopeDesktop, TOKEN_TTL, type Desktops } from '../desktop/desktops.js';
import { dfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { TokenInfo } from './model.js';
import type { Meta } from '../meta/repo.js';
import { checkScope, isHypervisorScope, METRICS_SCOPE } from './scope.js';
import { hashToken, newToken } from './tokens.js';

export interface MintedToken {
  /** The secret: shown once, never stored. */
  token: string;
  id: string;
  scope: string;
  expiresAt: string;
}

/**
 * The admin's view of bearer tokens: mint one for a scope, list them (id, scope, times; never a
 * secret), revoke one by id. A revoked token is deleted: its next request is 401.
 */
export class TokenRegistry {
  private readonly log: Logger;

  constructor(private readonly deps: { meta: Pick<Meta, 'tokens'>; desktops: Desktops; now: () => Date; log?: Logger }) {
    this.log = deps.log ?? silentLogger;
  }

  async mint(scopeRaw: string, ttlSeconds: number = TOKEN_TTL.default): Promise<MintedToken> {
    const scope = checkScope(scopeRaw);
    const desktop = scopeDesktop(scope);
    if (desktop !== undefined) {
      const t = await this.deps.desktops.mintToken(desktop, ttlSeconds);
      return { ...t, id: hashToken(t.token).slice(0, 16), scope: desktopScope(desktop) };
    }
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < TOKEN_TTL.min || ttlSeconds > TOKEN_TTL.max) {
      throw dfError('DF_ERR_BAD_REQUEST', `ttlSeconds must be an integer from ${TOKEN_TTL.min} to ${TOKEN_TTL.max}, got ${ttlSeconds}`, { field: 'ttlSeconds' });
    }
    const now = this.deps.now();
    const token = newToken(isHypervisorScope(scope) ? 'dfh' : scope === METRICS_SCOPE ? 'dfm' : 'dfa');
    const expiresAt = new Date(now.getTime() + ttlSeconds * 1000).toISOString();
    const hash = hashToken(token);
    await this.deps.meta.tokens.addToken(hash, scope, now.toISOString(), expiresAt);
    this.log.info({ scope, id: hash.slice(0, 16), expiresAt }, 'token issued');
    return { token, id: hash.slice(0, 16), scope, expiresAt };
  }

  list(): Promise<TokenInfo[]> {
    return this.deps.meta.tokens.listTokens();
  }

  async revoke(id: string, author: string): Promise<TokenInfo> {
    // The last-admin check and the delete are one transaction: two revokes at once keep one admin.
    const gone = await this.deps.meta.tokens.deleteToken(id, this.deps.now().toISOString());
    if (gone === 'last-admin') {
      throw dfError('DF_ERR_LAST_ADMIN_TOKEN', `token ${id} is the last admin token; create another (deskfuse token create --scope admin) before revoking it`, { id });
    }
    if (!gone) throw dfError('DF_ERR_TOKEN_NOT_FOUND', `no token with id ${JSON.stringify(id)} (deskfuse token list shows them)`, { id });
    this.log.warn({ id, scope: gone.scope, author }, 'token revoked');
    return gone;
  }
}
