/** Bearer tokens: only their hashes are stored (src/meta/sql-tokens.ts). */
export interface TokenRow {
  scope: string;
  /** ISO time, or null for a token that does not expire (the admin token). */
  expiresAt: string | null;
}

/** A bearer token as `token list` shows it: never its secret, nor its hash. */
export interface TokenInfo {
  /** The first 16 hex digits of the token's SHA-256: names it for `token revoke`, proves nothing. */
  id: string;
  scope: string;
  createdAt: string;
  expiresAt: string | null;
  /** When it was last accepted (kept to the minute), or null. */
  lastUsedAt: string | null;
}


export interface TokenRepo {
  addToken(hash: string, scope: string, at: string, expiresAt?: string | null): Promise<void>;
  findToken(hash: string): Promise<TokenRow | undefined>;
  countTokens(scope: string): Promise<number>;
  /** Add the token only if no token of `scope` exists, in one transaction (two servers starting at once make one admin token). Resolves to whether it was added. */
  addTokenIfNone(hash: string, scope: string, at: string): Promise<boolean>;
  /** Note a use of the token at `at`, unless one after `since` is noted already (one write a minute, not one a request). */
  touchToken(hash: string, at: string, since: string): Promise<void>;
  listTokens(): Promise<TokenInfo[]>;
  /**
   * Delete the token with this id; returns it, or undefined when there is none. With `keepLastAdmin`
   * (now), an admin token that is the last one live at that time is kept and 'last-admin' returned,
   * in the same transaction as the delete (two revokes at once cannot remove the last two).
   */
  deleteToken(id: string, keepLastAdmin?: string): Promise<TokenInfo | 'last-admin' | undefined>;
  /** Delete tokens that expired before `before`; returns how many. */
  pruneTokens(before: string): Promise<number>;
}
