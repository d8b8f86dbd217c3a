import { createHash, randomBytes } from 'node:crypto';

/** Tokens are random bearer secrets; the server keeps only their SHA-256. */
export function newToken(prefix: 'dfa' | 'dfd' | 'dfe' | 'dfb' | 'dfv' | 'dfh' | 'dfm'): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
