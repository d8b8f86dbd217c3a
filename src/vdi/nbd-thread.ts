import { ChunkIndex } from '../image/chunk-index.js';
import { serveInThread } from '../nbd/server.js';
import { ThreadChunks } from './thread-chunks.js';
import { VersionExport, type KnownAt, type VersionCall } from './version-export.js';

/**
 * An NBD worker thread of the server (src/nbd/server.ts NbdThreads): read-only version exports,
 * rebuilt from their index, reading the raw-chunk cache's slot files through ThreadChunks.
 */
let chunks: ThreadChunks | undefined;

serveInThread((kind, data, call) => {
  if (kind !== 'vdi-version') throw new Error(`unknown export kind ${kind}`);
  const d = data as { name: string; description: string; index: Uint8Array; known?: KnownAt[] };
  chunks ??= new ThreadChunks(call as (req: VersionCall) => Promise<unknown>);
  const exp = new VersionExport(d.name, d.description, ChunkIndex.decode(Buffer.from(d.index.buffer, d.index.byteOffset, d.index.byteLength)), chunks);
  if (d.known) exp.learn(d.known);
  return exp;
});
