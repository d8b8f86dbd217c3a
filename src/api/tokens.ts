import { Type, type Static } from '@sinclair/typebox';
import { Nullable, Time } from './common.js';

/** Bearer tokens (server/routes/tokens.ts): never a secret but in the answer that mints it. */

export const TokenInfo = Type.Object({
  id: Type.String({ description: 'the first 16 hex digits of the token\'s SHA-256: names it, proves nothing' }),
  scope: Type.String(),
  createdAt: Time,
  expiresAt: Nullable(Time),
  lastUsedAt: Nullable(Time),
});
export type TokenInfo = Static<typeof TokenInfo>;
export const TokenList = Type.Object({ tokens: Type.Array(TokenInfo) });
export type TokenList = Static<typeof TokenList>;
export const TokenRevoked = Type.Object({ revoked: TokenInfo });
export type TokenRevoked = Static<typeof TokenRevoked>;

export const MintedToken = Type.Object({ token: Type.String({ description: 'the secret: shown once, never stored' }), id: Type.String(), scope: Type.String(), expiresAt: Time });
export type MintedToken = Static<typeof MintedToken>;

export const CreateTokenBody = Type.Object({
  scope: Type.String({ minLength: 1, maxLength: 80 }),
  ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 365 * 86400 })),
}, { additionalProperties: false });
export type CreateTokenBody = Static<typeof CreateTokenBody>;

export const TokenParams = Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{16}$' }) });
