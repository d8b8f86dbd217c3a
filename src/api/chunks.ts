import { Type, type Static } from '@sinclair/typebox';
import { ChunkId } from './common.js';

/** Chunks and their batches (server/routes/chunks.ts, sync.ts); the bodies of single chunks and packs are binary. */

export const ChunkParams = Type.Object({ id: ChunkId });

export const IdsBody = Type.Object({ ids: Type.Array(ChunkId, { maxItems: 1048576 }) }, { additionalProperties: false });
export type IdsBody = Static<typeof IdsBody>;

export const ChunkStored = Type.Object({ id: Type.String(), stored: Type.Boolean({ description: 'false: it was stored already' }) });
export type ChunkStored = Static<typeof ChunkStored>;
export const Missing = Type.Object({ missing: Type.Array(Type.String()) });
export type Missing = Static<typeof Missing>;
export const PackStored = Type.Object({ stored: Type.Integer(), existing: Type.Integer() });
export type PackStored = Static<typeof PackStored>;
/** A patch upload: chunks stored, already there, and those that could not be rebuilt (the agent sends them whole). */
export const PatchStored = Type.Object({ stored: Type.Integer(), existing: Type.Integer(), failed: Type.Array(Type.String()) });
export type PatchStored = Static<typeof PatchStored>;
