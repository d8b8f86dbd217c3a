import { Type, type Static } from '@sinclair/typebox';
import { Nullable } from './common.js';

/** Signed versions (src/sign/statements.ts; server/routes/signed.ts). */

export const SignedStatement = Type.Object({
  body: Type.String({ description: 'canonical JSON text of the statement (src/sign/canonical.ts)' }),
  keyId: Type.String({ description: 'first 16 hex digits of SHA-256 of the signing Ed25519 public key' }),
  sig: Type.String({ description: 'Ed25519 signature (base64) of "deskfuse signed statement v1\\n" + body' }),
});
export type SignedStatement = Static<typeof SignedStatement>;

export const KeyChainSchema = Type.Object({
  root: Type.Object({ keyId: Type.String(), key: Type.String({ description: 'raw Ed25519 public key, base64' }) }),
  endorsements: Type.Array(SignedStatement, { description: 'one per rotation, oldest first: the new key signed by the one before' }),
});

export const SignedHeadAnswer = Type.Object({
  head: SignedStatement,
  manifest: SignedStatement,
  rollback: Nullable(SignedStatement),
  chain: KeyChainSchema,
});
export type SignedHeadAnswer = Static<typeof SignedHeadAnswer>;

export const KeysAnswer = Type.Object({
  keyId: Type.String({ description: 'the key new statements are signed with' }),
  key: Type.String({ description: 'its raw Ed25519 public key, base64' }),
  chain: KeyChainSchema,
  trust: Type.Object({}, { additionalProperties: true, description: 'the trust file for boot stages (initramfs /etc/deskfuse/trust.json)' }),
});
export type KeysAnswer = Static<typeof KeysAnswer>;

export const KeyRotated = Type.Object({ from: Type.String(), to: Type.String() });
