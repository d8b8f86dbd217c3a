import { Type, type Static, type TSchema, type TUnsafe } from '@sinclair/typebox';

/**
 * Building blocks of the HTTP API's contract (/api/v1 and /boot): TypeBox schemas are JSON Schema
 * (fastify validates and serializes with them, @fastify/swagger documents them) and their `Static<>`
 * types are the wire types the server, the CLI and the agent share. Database rows stay in their
 * domains (src/image/model.ts, …); a route maps a domain value to its wire type.
 */

/** `T` or null. */
export const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

/** A string enum as JSON Schema `enum` (clearer in OpenAPI and in ajv's messages than a union of literals). */
export const StringEnum = <T extends string>(values: readonly T[], opts: { description?: string } = {}): TUnsafe<T> =>
  Type.Unsafe<T>({ type: 'string', enum: [...values], ...opts });

const NAME_PATTERN = '^[a-z0-9][a-z0-9._-]{0,63}$';
const REF_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._/-]*$';

export const ImageName = Type.String({ pattern: NAME_PATTERN });
export const DesktopName = ImageName;
export const VersionNumber = Type.Integer({ minimum: 1, maximum: 2147483647 });
export const ChunkId = Type.String({ pattern: '^[0-9a-f]{64}$' });
export const RefName = Type.String({ minLength: 1, maxLength: 200, pattern: REF_PATTERN });
/** An ISO 8601 time, as every time on the wire. */
export const Time = Type.String({ description: 'ISO 8601 time' });
export const Holder = Type.String({ minLength: 1, maxLength: 200 });

/** Every error answer: a stable DF_ERR_* code (src/errors.ts), a message, and the error's structured fields. */
export const ErrorBody = Type.Object(
  { code: Type.String(), message: Type.String() },
  { additionalProperties: true },
);
export type ErrorBody = Static<typeof ErrorBody>;
