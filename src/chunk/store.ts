/**
 * The chunk store ladder (after desync): a reader can fetch and test, a store can also write, a
 * prunable store can also enumerate and delete. Capabilities come from wrapping (a cache store wraps
 * a remote reader and a local store), never from mode flags. Ids are lowercase hex BLAKE3-256.
 *
 * Every implementation returns bytes only after checking them against the id
 * (DF_ERR_CHUNK_INVALID / DF_ERR_CHUNK_CORRUPT), so a caller never sees unverified data.
 */
export interface StoredChunk {
  /** The raw chunk bytes, verified against the id. */
  raw: Buffer;
  /** The zstd frame exactly as stored and served on the wire. */
  frame: Buffer;
}

export interface ChunkReader {
  has(id: string): Promise<boolean>;
  /** Verified chunk; DF_ERR_CHUNK_NOT_FOUND when absent, DF_ERR_CHUNK_CORRUPT when the bytes are bad. */
  get(id: string): Promise<StoredChunk>;
}

export interface ChunkStore extends ChunkReader {
  /**
   * Store a chunk given as a zstd frame (as uploaded) whose raw bytes the caller has already
   * verified, or as raw bytes (the store compresses). Durable when the promise resolves.
   * Returns false when the chunk was already there.
   */
  put(id: string, chunk: { frame: Buffer } | { raw: Buffer }): Promise<boolean>;
  /** Store several chunks with one durability barrier (batched fsyncs). */
  putMany(chunks: Array<{ id: string; frame: Buffer }>): Promise<{ stored: number; existing: number }>;
}

/** A store that can answer a batch fetch as one pack body without opening the frames (src/chunk/pack.ts). */
export interface PackReader {
  /**
   * The chunks as one pack body, in order: DF_ERR_CHUNK_NOT_FOUND (the first absent id),
   * DF_ERR_TOO_LARGE (frames past `maxFrameBytes`), DF_ERR_CHUNK_CORRUPT (a frame without a sane header).
   */
  readPack(ids: string[], maxFrameBytes: number): Promise<Buffer>;
  /**
   * The same body without its frames, for the sender thread (native sendPack): `meta` is the header,
   * the record heads and the trailer, and each frame is the file of its id under `root`
   * (`<root>/<id[0..3]>/<id>.zst`), `size` the whole body's length. Same errors as readPack. `forget`
   * drops what was learnt of these ids (a file was gone or had changed when it was sent).
   */
  packPlan(ids: string[], maxFrameBytes: number): Promise<PackPlan>;
  forget(ids: string[]): void;
}

export interface PackPlan {
  /** The body's length (Content-Length). */
  size: number;
  /** The pack without its frames: header (8 bytes), record heads (40 each), trailer (36). */
  meta: Buffer;
  /** The store's folder: a frame is `<root>/<id[0..3]>/<id>.zst`. */
  root: string;
}

export const isPackReader = (s: object): s is PackReader => typeof (s as Partial<PackReader>).readPack === 'function';

export interface PrunableStore extends ChunkStore {
  list(): AsyncIterable<string>;
  remove(id: string): Promise<void>;
  /** Bytes the stored frames take (for metrics and benchmarks). */
  size(): Promise<{ chunks: number; bytes: number }>;
}
