import type { ChunkReader } from '../chunk/store.js';
import { dfError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { Meta } from '../meta/repo.js';
import { checkDesktopName, checkImageName, checkRefName } from './names.js';
import {
  checkOverride, effectivePolicy, type ConflictStatus, type DeleteOutcome, type Dependent, type PolicyOverride, type RetentionPolicy,
} from './retention.js';

/**
 * Retention and deletes as the API offers them (issue 13, part A): an image's policy, `image prune`
 * (dry or not; what goes, why the rest stays, the bytes it frees), the server's timer prune of every
 * image, and the deletes of images, refs, desktops and endpoints, each refused with
 * DF_ERR_IN_USE naming what depends on it unless forced.
 *
 * Chunks are not freed here: a pruned version's chunks go with the next garbage collection
 * (`deskfuse store gc`), which marks from what remains. Layers and indexes (blobs) likewise; the
 * byte estimate counts the blobs only dropped versions name, and their deltas, which go now.
 */
export interface LifecycleDeps {
  meta: Pick<Meta, 'lifecycle' | 'images' | 'vdi' | 'tokens'>;
  blobs: ChunkReader;
  deltas: { drop(layers: readonly string[]): Promise<number>; sizeOf(layers: readonly string[]): Promise<number>; dropIdle(before: number): Promise<{ files: number; bytes: number }> };
  defaults: RetentionPolicy;
  /** Delta files not asked for in this many days go at each timer prune; 0 = never for idleness. */
  deltaIdleDays: number;
  /** false: the timer's pass leaves versions alone (only `image prune` drops them). Default true. */
  pruneVersions?: boolean;
  /** Ends a VDI session's export before a forced desktop delete (its owner's discard); errors are logged, the row is marked anyway. */
  discardSession?: (id: string) => Promise<unknown>;
  log?: Logger;
  now?: () => Date;
}

export interface PolicyView {
  image: string;
  /** The image's own values (null: the server's default). */
  override: PolicyOverride;
  /** What a prune of the image applies. */
  effective: RetentionPolicy;
  defaults: RetentionPolicy;
}

export interface PruneReport {
  image: string;
  dryRun: boolean;
  policy: RetentionPolicy;
  /** Versions whose rows go (went), newest first. */
  dropped: Array<{ version: number; parent: number | null; createdAt: string; landedRef: string | null }>;
  /** Versions that stay, newest first, with every reason. */
  kept: Array<{ version: number; why: string[] }>;
  /** Conflict refs: unresolved ones stay until someone resolves them; resolved ones past conflictDays go. */
  conflicts: ConflictStatus[];
  /** Bytes freed (or that would be): layers and indexes only dropped versions name, and their deltas. */
  bytes: { layers: number; indexes: number; deltas: number; total: number };
  chunks: string;
}

const CHUNKS_NOTE = 'chunks only dropped versions reach are freed by the next `deskfuse store gc`';
const NO_OVERRIDE: PolicyOverride = { keepLast: null, keepDays: null, conflictDays: null };

export class Lifecycle {
  private readonly log: Logger;
  private readonly now: () => Date;

  constructor(private readonly deps: LifecycleDeps) {
    this.log = deps.log ?? silentLogger;
    this.now = deps.now ?? (() => new Date());
  }

  async policy(image: string): Promise<PolicyView> {
    await this.image(image);
    const override = (await this.deps.meta.lifecycle.getPolicy(image)) ?? NO_OVERRIDE;
    return { image, override, effective: effectivePolicy(this.deps.defaults, override), defaults: this.deps.defaults };
  }

  /** Change some of an image's values: a number sets it, null returns it to the server's default, absent keeps it. */
  async setPolicy(image: string, change: Partial<PolicyOverride>, author: string): Promise<PolicyView> {
    await this.image(image);
    const cur = (await this.deps.meta.lifecycle.getPolicy(image)) ?? NO_OVERRIDE;
    const next = checkOverride({
      keepLast: change.keepLast === undefined ? cur.keepLast : change.keepLast,
      keepDays: change.keepDays === undefined ? cur.keepDays : change.keepDays,
      conflictDays: change.conflictDays === undefined ? cur.conflictDays : change.conflictDays,
    });
    await this.deps.meta.lifecycle.setPolicy(image, next, this.now().toISOString());
    this.log.info({ image, policy: next, author }, 'retention policy set');
    return this.policy(image);
  }

  async prune(image: string, opts: { dryRun: boolean; author: string }): Promise<PruneReport> {
    checkImageName(image);
    const out = await this.deps.meta.lifecycle.prune(image, this.deps.defaults, this.now(), opts);
    if (!out) throw notFound('DF_ERR_IMAGE_NOT_FOUND', `no image named ${JSON.stringify(image)}`, { image });
    const layers = new Set(out.freedLayers);
    // Sizes are read before the deltas go (a dry run reads only).
    const [layerBytes, indexBytes] = await Promise.all([this.blobBytes(out.freedBlobs.filter((id) => layers.has(id))), this.blobBytes(out.freedBlobs.filter((id) => !layers.has(id)))]);
    const deltaBytes = opts.dryRun ? await this.deps.deltas.sizeOf(out.freedLayers) : await this.deps.deltas.drop(out.freedLayers);
    const report: PruneReport = {
      image, dryRun: opts.dryRun, policy: out.plan.policy,
      dropped: out.plan.drop.map((v) => ({ version: v.version, parent: v.parent, createdAt: v.createdAt, landedRef: v.landedRef })),
      kept: out.plan.keep, conflicts: out.plan.conflicts,
      bytes: { layers: layerBytes, indexes: indexBytes, deltas: deltaBytes, total: layerBytes + indexBytes + deltaBytes },
      chunks: CHUNKS_NOTE,
    };
    if (!opts.dryRun && (report.dropped.length || report.conflicts.some((c) => c.deleted))) {
      this.log.info({ image, versions: report.dropped.map((v) => v.version), conflictRefsDeleted: report.conflicts.filter((c) => c.deleted).map((c) => c.ref), bytes: report.bytes, author: opts.author }, 'versions pruned');
    }
    return report;
  }

  /** The timer's pass: every image by its policy, then delta files idle past `deltaIdleDays`. */
  async pruneAll(author = 'retention'): Promise<{ images: number; versions: number; deltaFiles: number; bytes: number }> {
    let versions = 0;
    let bytes = 0;
    const images = this.deps.pruneVersions === false ? [] : await this.deps.meta.images.listImages();
    for (const img of images) {
      try {
        const r = await this.prune(img.name, { dryRun: false, author });
        versions += r.dropped.length;
        bytes += r.bytes.total;
      } catch (err) {
        this.log.error({ err, image: img.name }, 'prune of an image failed');
      }
    }
    let deltaFiles = 0;
    if (this.deps.deltaIdleDays > 0) {
      const idle = await this.deps.deltas.dropIdle(this.now().getTime() - this.deps.deltaIdleDays * 86_400_000);
      deltaFiles = idle.files;
      bytes += idle.bytes;
      if (idle.files) this.log.info({ files: idle.files, bytes: idle.bytes, idleDays: this.deps.deltaIdleDays }, 'idle deltas dropped (rebuilt on demand)');
    }
    return { images: images.length, versions, deltaFiles, bytes };
  }

  async deleteRef(image: string, ref: string, o: { force: boolean; author: string }): Promise<{ image: string; ref: string; version: number }> {
    checkImageName(image);
    checkRefName(ref);
    await this.image(image);
    const out = await this.deps.meta.lifecycle.deleteRef(image, ref, { ...o, at: this.now().toISOString() });
    const done = this.settle(out, `ref ${ref} of image ${image}`, { image, ref }, () => notFound('DF_ERR_REF_NOT_FOUND', `image ${image} has no ref ${ref}`, { image, ref }));
    this.log.info({ image, ref, version: done.version, force: o.force, author: o.author }, 'ref deleted');
    return { image, ref, version: done.version };
  }

  /** Before a forced delete: end the unfinished VDI sessions (of a desktop, or of every desktop of an image) through their owner. */
  private async discardSessions(which: { desktop: string } | { image: string }): Promise<void> {
    if (!this.deps.discardSession) return;
    const open = (await this.deps.meta.vdi.list({ ...('desktop' in which ? { desktop: which.desktop } : {}), states: ['open', 'committing', 'failed'] }))
      .filter((s) => !('image' in which) || s.image === which.image);
    for (const s of open) {
      await this.deps.discardSession(s.id).catch((err: unknown) => this.log.warn({ err, session: s.id, desktop: s.desktop }, 'discarding the VDI session of a deleted desktop failed: its row is marked discarded'));
    }
  }

  async deleteDesktop(name: string, o: { force: boolean; author: string }) {
    checkDesktopName(name);
    if (o.force) await this.discardSessions({ desktop: name });
    const out = await this.deps.meta.lifecycle.deleteDesktop(name, { ...o, at: this.now().toISOString() });
    const done = this.settle(out, `desktop ${name}`, { desktop: name }, () => notFound('DF_ERR_DESKTOP_NOT_FOUND', `no desktop named ${JSON.stringify(name)}`, { desktop: name }));
    // This server remembers token lookups a few seconds (src/auth/token-cache.ts); a prune of tokens
    // (none expired before 1970) is the cache's way to forget them, as a revoke does.
    if (done.tokensRevoked > 0) await this.deps.meta.tokens.pruneTokens(new Date(0).toISOString());
    const { kind: _k, ...rest } = done;
    this.log.warn({ desktop: name, ...rest, force: o.force, author: o.author }, 'desktop deleted');
    return { desktop: name, ...rest };
  }

  /** `key`: the endpoint's id or name (the route resolves a MAC to its id first). */
  async deleteEndpoint(key: string, o: { force: boolean; author: string }): Promise<{ id: string; name: string }> {
    const out = await this.deps.meta.lifecycle.deleteEndpoint(key, { ...o, at: this.now().toISOString() });
    const done = this.settle(out, `endpoint ${key}`, { endpoint: key }, () => notFound('DF_ERR_ENDPOINT_NOT_FOUND', `no endpoint ${JSON.stringify(key)}`, { endpoint: key }));
    this.log.warn({ endpoint: done.id, name: done.name, force: o.force, author: o.author }, 'endpoint deleted');
    return { id: done.id, name: done.name };
  }

  async deleteImage(name: string, o: { force: boolean; author: string }): Promise<{ image: string; versions: number; desktops: string[]; bytes: number; chunks: string }> {
    checkImageName(name);
    if (o.force) await this.discardSessions({ image: name });
    const out = await this.deps.meta.lifecycle.deleteImage(name, { ...o, at: this.now().toISOString() });
    const done = this.settle(out, `image ${name}`, { image: name }, () => notFound('DF_ERR_IMAGE_NOT_FOUND', `no image named ${JSON.stringify(name)}`, { image: name }));
    if (done.desktops.length) await this.deps.meta.tokens.pruneTokens(new Date(0).toISOString()); // their tokens: see deleteDesktop
    const bytes = (await this.blobBytes(done.freedBlobs)) + (await this.deps.deltas.drop(done.freedLayers));
    this.log.warn({ image: name, versions: done.versions, desktops: done.desktops, bytes, force: o.force, author: o.author }, 'image deleted');
    return { image: name, versions: done.versions, desktops: done.desktops, bytes, chunks: CHUNKS_NOTE };
  }

  private settle<T>(out: DeleteOutcome<T>, what: string, fields: Record<string, unknown>, missing: () => Error): { kind: 'deleted' } & T {
    if (out.kind === 'not-found') throw missing();
    if (out.kind === 'in-use') throw inUse(what, out.dependents, out.forceable, fields);
    return out;
  }

  private async image(name: string): Promise<void> {
    checkImageName(name);
    if (!(await this.deps.meta.images.getImage(name))) throw notFound('DF_ERR_IMAGE_NOT_FOUND', `no image named ${JSON.stringify(name)}`, { image: name });
  }

  /** Stored bytes of these blobs (absent ones count 0). */
  private async blobBytes(ids: readonly string[]): Promise<number> {
    let n = 0;
    for (const id of ids) n += await this.deps.blobs.get(id).then((b) => b.frame.length, () => 0);
    return n;
  }
}

function notFound(code: ErrorCode, message: string, fields: Record<string, unknown>) {
  return dfError(code, message, fields);
}

/** DF_ERR_IN_USE (forceable) or DF_ERR_REF_IN_USE (a desktop's line: never), naming each dependent. */
export function inUse(what: string, dependents: Dependent[], forceable: boolean, fields: Record<string, unknown>) {
  const list = dependents.map((d) => `${d.kind} ${d.name}: ${d.detail}`).join('; ');
  return forceable
    ? dfError('DF_ERR_IN_USE', `${what} is in use (${list}): nothing was deleted; --force deletes it anyway`, { ...fields, dependents, force: true })
    : dfError('DF_ERR_REF_IN_USE', `${what} is in use (${list}): nothing was deleted; delete or change the desktop first`, { ...fields, dependents, force: false });
}
