import { dfError } from '../errors.js';
import type { CommitGuard } from '../gc/guard.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { HASH_ALG, hashBytes, idHex, isZeroId } from '../chunk/id.js';
import type { ChunkStore } from '../chunk/store.js';
import type { CommitFence, CommitOutcome, ImageRepo, ImageRow, RefLogRow, RefRow, VersionKind, VersionRow } from './model.js';
import { blockMask } from './blocks.js';
import { ChunkIndex } from './chunk-index.js';
import { checkGeometry, chunkLength, fullMask, maskBytes, type Geometry } from './geometry.js';
import { applyLayer, decodeLayer, encodeLayer, type Layer, type LayerEntry } from './layer.js';
import { checkImageName, checkRefName, conflictRefName, isConflictRef } from './names.js';
import type { ManifestBody, Signed, StatementBody } from '../sign/statements.js';

/** What signs version manifests (server/signing.ts holds the key). */
export interface StatementSigner {
  readonly keyId: string;
  sign(body: StatementBody): Signed;
}

/**
 * The image catalog: images, their versions and refs, over a metadata repository, a chunk store and
 * a blob store (layers and chunk indexes, content-addressed like chunks). It enforces the rules:
 * a version is recorded only after every chunk it needs is stored; a ref moves only by
 * compare-and-swap; a commit that lost the race is kept under `conflicts/…`.
 */
export interface CatalogDeps {
  images: ImageRepo;
  chunks: ChunkStore;
  blobs: ChunkStore;
  log?: Logger;
  now?: () => Date;
  /** Garbage collection's protection of what a commit is about to reference (src/gc/guard.ts). */
  guard?: CommitGuard;
  /** Signs each version's manifest as it lands (DESIGN §6: endpoints verify what they sync to). */
  signer?: StatementSigner;
}

export interface CommitRequest {
  image: string;
  parent: number | null;
  ref: string;
  layer: string;
  kind: VersionKind;
  author: string;
  message: string;
  /** A desktop commit: the ref moves only while this is the desktop's current lease (else a 'fencing' conflict). */
  fence?: CommitFence;
}

const MASK_CONCURRENCY = 16;
/** Layer and index bytes kept in memory (content-addressed, so never stale): a storm asks for the same few. */
const BLOB_CACHE_BYTES = 16 * 2 ** 20; // a storm asks for a few versions; RSS matters more (issue 16)

export class Catalog {
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly indexCache = new Map<string, ChunkIndex>();
  private readonly blobCache = new Map<string, Buffer>();
  private blobCacheBytes = 0;

  constructor(private readonly deps: CatalogDeps) {
    this.log = deps.log ?? silentLogger;
    this.now = deps.now ?? (() => new Date());
  }

  async createImage(name: string, g: Geometry): Promise<{ created: boolean; image: ImageRow }> {
    checkImageName(name);
    checkGeometry(g);
    const r = await this.deps.images.createImage({ name, virtualSize: g.virtualSize, chunkSize: g.chunkSize, hashAlg: HASH_ALG, createdAt: this.now().toISOString() });
    if (!r.created) {
      const same = r.image.virtualSize === g.virtualSize && r.image.chunkSize === g.chunkSize;
      // An image created by an interrupted `image create` (no version yet) may be taken over.
      if (!same || (await this.deps.images.versionCount(name)) > 0) {
        throw dfError('DF_ERR_IMAGE_EXISTS', `image ${name} already exists`, { image: name, virtualSize: r.image.virtualSize, chunkSize: r.image.chunkSize });
      }
    }
    if (r.created) this.log.info({ image: name, ...g }, 'image created');
    return r;
  }

  async image(name: string): Promise<ImageRow> {
    const img = await this.deps.images.getImage(name);
    if (!img) throw dfError('DF_ERR_IMAGE_NOT_FOUND', `no image named ${JSON.stringify(name)}`, { image: name });
    return img;
  }

  async listImages(): Promise<ImageRow[]> {
    return await this.deps.images.listImages();
  }

  async refs(image: string): Promise<RefRow[]> {
    await this.image(image);
    return await this.deps.images.listRefs(image);
  }

  async version(image: string, version: number): Promise<VersionRow> {
    await this.image(image);
    const v = await this.deps.images.getVersion(image, version);
    if (!v) throw dfError('DF_ERR_VERSION_NOT_FOUND', `image ${image} has no version ${version}`, { image, version });
    return v;
  }

  /** A revision is a version number or a ref name. */
  async resolve(image: string, rev: string): Promise<VersionRow> {
    if (/^\d+$/.test(rev)) return this.version(image, Number(rev));
    checkRefName(rev, 'rev');
    await this.image(image);
    const ref = await this.deps.images.getRef(image, rev);
    if (!ref) throw dfError('DF_ERR_REF_NOT_FOUND', `image ${image} has no ref ${rev}`, { image, ref: rev });
    return this.version(image, ref.version);
  }

  /** Versions newest first; with `from`, the ancestry of that version (a log). */
  async versions(image: string, opts: { from?: VersionRow; limit: number }): Promise<VersionRow[]> {
    await this.image(image);
    if (!opts.from) return await this.deps.images.listVersions(image, opts.limit);
    const out: VersionRow[] = [];
    for (let v: VersionRow | undefined = opts.from; v && out.length < opts.limit; v = v.parent === null ? undefined : await this.deps.images.getVersion(image, v.parent)) out.push(v);
    return out;
  }

  async index(image: string, version: number): Promise<ChunkIndex> {
    const v = await this.version(image, version);
    return this.loadIndex(v.index);
  }

  private async loadIndex(id: string): Promise<ChunkIndex> {
    const hit = this.indexCache.get(id);
    if (hit) return hit;
    const idx = ChunkIndex.decode((await this.deps.blobs.get(id)).raw);
    this.indexCache.set(id, idx);
    if (this.indexCache.size > 8) this.indexCache.delete(this.indexCache.keys().next().value!);
    return idx;
  }

  async indexBytes(image: string, version: number): Promise<Buffer> {
    return this.blobBytes((await this.version(image, version)).index);
  }

  async layerBytes(image: string, version: number): Promise<Buffer> {
    return this.blobBytes((await this.version(image, version)).layer);
  }

  /** A layer's or index's bytes, read (decompressed and verified by the store) once while they stay in memory. */
  private async blobBytes(id: string): Promise<Buffer> {
    const hit = this.blobCache.get(id);
    if (hit) {
      // most recently used last
      this.blobCache.delete(id);
      this.blobCache.set(id, hit);
      return hit;
    }
    const raw = (await this.deps.blobs.get(id)).raw;
    if (raw.length > BLOB_CACHE_BYTES / 4 || this.blobCache.has(id)) return raw;
    this.blobCache.set(id, raw);
    this.blobCacheBytes += raw.length;
    for (const [k, b] of this.blobCache) {
      if (this.blobCacheBytes <= BLOB_CACHE_BYTES) break;
      this.blobCache.delete(k);
      this.blobCacheBytes -= b.length;
    }
    return raw;
  }

  /** A staged layer (by its id), decoded. */
  async stagedLayer(id: string): Promise<Layer> {
    return decodeLayer((await this.deps.blobs.get(id)).raw);
  }

  /** Store an uploaded layer (no masks yet) so a commit can name it. */
  async stageLayer(image: string, bytes: Buffer): Promise<{ layer: string; entries: number }> {
    const img = await this.image(image);
    const layer = decodeLayer(bytes);
    this.checkSameGeometry(img, layer.geometry);
    const id = idHex(hashBytes(bytes));
    await this.deps.blobs.put(id, { raw: bytes });
    return { layer: id, entries: layer.entries.length };
  }

  /**
   * Hold a staged layer against garbage collection until the returned release: a VDI checkpoint
   * between staging its layer and recording it in the session row (a root from then on). `fresh`: the
   * chunks it stored just now (candidates among them are cancelled).
   */
  async holdStaged(image: string, layer: string, fresh: string[]): Promise<() => Promise<void>> {
    if (!this.deps.guard) return async () => {};
    const release = await this.deps.guard.hold(image, layer, null, fresh);
    // Checked again under the hold, as a commit does: a sweep may have taken the layer or a chunk since
    // they were stored (older than the grace period by then). Recorded anyway, the checkpoint could never be committed.
    const missing = (await this.deps.blobs.has(layer)) ? await this.missingChunks(fresh) : [layer];
    if (missing.length) {
      await release();
      throw dfError('DF_ERR_CHUNKS_MISSING', `${missing.length} of the checkpoint's chunks or its layer were removed by garbage collection since they were stored`, { image, missing });
    }
    return release;
  }

  async missingChunks(ids: string[]): Promise<string[]> {
    const flags = await Promise.all(ids.map((id) => this.deps.chunks.has(id)));
    return ids.filter((_, i) => !flags[i]);
  }

  async commit(req: CommitRequest): Promise<CommitOutcome> {
    const img = await this.image(req.image);
    checkRefName(req.ref);
    if (isConflictRef(req.ref)) throw dfError('DF_ERR_REF_NAME', 'commits cannot target a conflicts/ ref', { ref: req.ref });
    const parent = req.parent === null ? null : await this.version(req.image, req.parent);
    if (!(await this.deps.blobs.has(req.layer))) throw dfError('DF_ERR_LAYER_NOT_FOUND', `layer ${req.layer} was not uploaded`, { layer: req.layer });
    const staged = decodeLayer((await this.deps.blobs.get(req.layer)).raw);
    this.checkSameGeometry(img, staged.geometry);
    // A retry of a commit that already landed (the client died before it heard the answer) gets
    // the same version back, not a duplicate.
    const commitKey = idHex(hashBytes(Buffer.from(JSON.stringify([req.ref, req.parent, req.layer, req.kind]))));
    const again = await this.deps.images.findCommit(req.image, commitKey, req.ref);
    if (again) {
      this.log.info({ image: req.image, version: again.version.version, ref: req.ref }, 'commit retried: returning the version it made');
      return again;
    }

    const needed = [...new Set(staged.entries.filter((e) => !isZeroId(e.id)).map((e) => idHex(e.id)))];
    // From here until its version row is in, garbage collection keeps the staged layer and its chunks.
    const release = this.deps.guard ? await this.deps.guard.hold(req.image, req.layer, parent?.index ?? null, needed) : undefined;
    try {
      return await this.commitHeld(req, staged, needed, parent, commitKey);
    } finally {
      await release?.();
    }
  }

  /**
   * A publish identical to its parent: the staged layer changes no chunk. Then no version is made
   * (an admin re-publishing the same disk gets "nothing changed", not an empty version); the answer
   * names the parent and where the ref is. Undefined when the layer changes something.
   */
  async unchanged(image: string, parentVersion: number, ref: string, layer: string): Promise<{ version: VersionRow; head: number | null } | undefined> {
    const img = await this.image(image);
    checkRefName(ref);
    const parent = await this.version(image, parentVersion);
    if (!(await this.deps.blobs.has(layer))) throw dfError('DF_ERR_LAYER_NOT_FOUND', `layer ${layer} was not uploaded`, { layer });
    const staged = decodeLayer((await this.deps.blobs.get(layer)).raw);
    this.checkSameGeometry(img, staged.geometry);
    if (staged.entries.length) return undefined;
    return { version: parent, head: (await this.deps.images.getRef(image, ref))?.version ?? null };
  }

  private async commitHeld(req: CommitRequest, staged: Layer, needed: string[], parent: VersionRow | null, commitKey: string): Promise<CommitOutcome> {
    if (this.deps.guard) {
      // Checked again under the hold: a sweep may have taken the staged layer, or retention the parent, meanwhile.
      if (!(await this.deps.blobs.has(req.layer))) throw dfError('DF_ERR_LAYER_NOT_FOUND', `layer ${req.layer} was not uploaded`, { layer: req.layer });
      if (parent) await this.version(req.image, parent.version);
    }
    const missing = await this.missingChunks(needed);
    if (missing.length) {
      throw dfError('DF_ERR_CHUNKS_MISSING', `${missing.length} of the commit's chunks are not stored`, { image: req.image, missing });
    }
    const parentIndex = parent ? await this.loadIndex(parent.index) : null;
    const final = await this.withMasks(staged, parentIndex);
    const layerBytes = encodeLayer(final);
    const layerId = idHex(hashBytes(layerBytes));
    const index = applyLayer(parentIndex, final);
    const indexBytes = index.encode();
    const indexId = idHex(hashBytes(indexBytes));
    // The final layer and index may be stored already (the same change made before, since dropped):
    // held too, so a sweep neither takes them between these puts and the version row nor counts on their old time.
    const release = this.deps.guard ? await this.deps.guard.hold(req.image, layerId, indexId, []) : undefined;
    try {
      await this.deps.blobs.put(layerId, { raw: layerBytes });
      await this.deps.blobs.put(indexId, { raw: indexBytes });
      return await this.land(req, commitKey, layerId, indexId, final, index);
    } finally {
      await release?.();
    }
  }

  private async land(req: CommitRequest, commitKey: string, layerId: string, indexId: string, final: Layer, index: ChunkIndex): Promise<CommitOutcome> {
    const at = this.now();
    const outcome = await this.deps.images.commitVersion(
      {
        image: req.image, commitKey, parent: req.parent, layer: layerId, index: indexId, kind: req.kind, author: req.author,
        message: req.message, chunksChanged: final.entries.length, chunksTotal: index.nonZeroCount(), at: at.toISOString(),
      },
      req.ref,
      conflictRefName(req.ref, at),
      req.fence,
    );
    // Signed as it lands, whatever created it (publish, VOI or VDI commit, a conflict kept aside). A
    // crash between the row and this leaves the version unsigned until manifest() signs it on first use.
    if (this.deps.signer) await this.manifest(req.image, outcome.version.version, outcome.version);
    const fields = { image: req.image, version: outcome.version.version, parent: req.parent, ref: req.ref, kind: req.kind, chunksChanged: final.entries.length };
    if (outcome.kind === 'conflict') this.log.warn({ ...fields, head: outcome.head, conflictRef: outcome.conflictRef, reason: outcome.reason, ...(req.fence ? { fence: req.fence } : {}) }, 'commit kept as conflict');
    else this.log.info(fields, 'version committed');
    return outcome;
  }

  /**
   * The server holds both the parent's and the new chunk, so it records which 4 KiB blocks changed
   * where both are non-zero (an endpoint holding the parent then fetches only those blocks).
   */
  private async withMasks(layer: Layer, parent: ChunkIndex | null): Promise<Layer> {
    if (!parent) return { ...layer, hasMasks: false };
    const g = layer.geometry;
    const mb = maskBytes(g);
    const all = fullMask(g);
    const out: LayerEntry[] = new Array(layer.entries.length);
    for (let k = 0; k < layer.entries.length; k += MASK_CONCURRENCY) {
      const batch = layer.entries.slice(k, k + MASK_CONCURRENCY);
      const done = await Promise.all(
        batch.map(async (e) => {
          const before = parent.idAt(e.index);
          if (isZeroId(before) || isZeroId(e.id)) return { index: e.index, id: e.id, mask: all };
          const [x, y] = await Promise.all([this.deps.chunks.get(idHex(before)), this.deps.chunks.get(idHex(e.id))]);
          return { index: e.index, id: e.id, mask: blockMask(x.raw, y.raw, chunkLength(g, e.index), mb) };
        }),
      );
      done.forEach((e, j) => (out[k + j] = e));
    }
    return { geometry: g, hasMasks: true, entries: out };
  }

  /**
   * A version's signed manifest: the one stored at commit, else (a version older than signing, or
   * one whose commit stopped before it was signed) signed now from its row and stored.
   */
  async manifest(image: string, version: number, row?: VersionRow): Promise<Signed> {
    // A row given is a version just committed: nothing can be stored for it yet (no lookup on the commit path).
    const kept = row ? undefined : await this.deps.images.getManifest(image, version);
    if (kept) return kept;
    const signer = this.deps.signer;
    if (!signer) throw dfError('DF_ERR_SIG_KEY', 'this server has no signing key', { image, version });
    const v = row ?? (await this.version(image, version));
    const img = await this.image(image);
    const body: ManifestBody = {
      type: 'manifest', image, version: v.version, parent: v.parent, kind: v.kind, layer: v.layer, index: v.index, hashAlg: img.hashAlg, createdAt: v.createdAt, keyId: signer.keyId,
    };
    const signed = signer.sign(body);
    await this.deps.images.putManifest(image, version, signed);
    return signed;
  }

  async moveRef(image: string, ref: string, to: number, expect: number | null, author: string, reason = 'ref set'): Promise<RefRow> {
    checkRefName(ref);
    await this.version(image, to);
    const r = await this.deps.images.moveRef(image, ref, to, expect, reason, author, this.now().toISOString());
    if (!r.moved) {
      throw dfError('DF_ERR_REF_MOVED', `ref ${ref} is at ${r.head ?? 'nothing'}, not at the expected ${expect ?? 'nothing'}`, { image, ref, head: r.head, expected: expect });
    }
    this.log.info({ image, ref, from: expect, to, author }, 'ref moved');
    return r.ref;
  }

  async refLog(image: string, ref: string | undefined, limit: number): Promise<RefLogRow[]> {
    await this.image(image);
    if (ref !== undefined) checkRefName(ref);
    return await this.deps.images.refLog(image, ref, limit);
  }

  private checkSameGeometry(img: ImageRow, g: Geometry): void {
    if (g.virtualSize !== img.virtualSize || g.chunkSize !== img.chunkSize) {
      throw dfError('DF_ERR_SIZE_MISMATCH', `image ${img.name} is ${img.virtualSize} bytes in ${img.chunkSize}-byte chunks; the layer is ${g.virtualSize} in ${g.chunkSize}`, {
        image: img.name, expected: { virtualSize: img.virtualSize, chunkSize: img.chunkSize }, got: g,
      });
    }
  }
}
