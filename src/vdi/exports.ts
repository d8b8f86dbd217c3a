import { desktopReader } from '../auth/scope.js';
import { hashToken } from '../auth/tokens.js';
import type { RawChunkCache } from '../chunk/raw-cache.js';
import { dfError, isDeskfuseError } from '../errors.js';
import type { Catalog } from '../image/catalog.js';
import { isConflictRef, parseImageRev } from '../image/names.js';
import type { Meta } from '../meta/repo.js';
import type { NbdExport, NbdExportEntry, NbdExportProvider, NbdOpenContext } from '../nbd/export.js';
import type { Extent } from '../nbd/transmission.js';
import type { CloudIncrement } from './increment.js';
import type { VdiSessions } from './sessions.js';
import { BLOCK_SIZE, VersionExport } from './version-export.js';

/**
 * deskfuse's NBD exports. Names (NBD carries no credentials outside TLS, so a secret travels in the
 * name, after the last `:`; image and ref names never contain one):
 *
 *   IMAGE@REF[:TOKEN]     read-only; the ref is resolved when the client connects (NBD_OPT_GO)
 *   IMAGE@VERSION[:TOKEN] read-only, that version
 *   session/ID:SECRET     writable: a VDI session's disk (its cloud increment over the base)
 *
 * TOKEN is the admin token or a desktop token of a desktop on that image whose line holds REF/VERSION; SECRET is the one the session
 * was created with (or the admin token). Without `anonymousRead`, an image export without a token is
 * refused (NBD_REP_ERR_POLICY) and NBD_OPT_LIST too; with it, image exports are open to read and listed.
 * A session export always needs its secret: an unauthenticated client can never write.
 */
export interface ExportsDeps {
  catalog: Catalog;
  sessions: VdiSessions;
  meta: Pick<Meta, 'tokens' | 'images' | 'desktops'>;
  cache: RawChunkCache;
  anonymousRead: boolean;
  now?: () => Date;
}

/** `name` with its secret cut off, for logs. */
export function redactExportName(name: string): string {
  const { target, secret } = splitExportName(name);
  return secret === undefined ? name : `${target}:…`;
}

export function splitExportName(name: string): { target: string; secret: string | undefined } {
  const at = name.lastIndexOf(':');
  return at < 0 ? { target: name, secret: undefined } : { target: name.slice(0, at), secret: name.slice(at + 1) };
}

export class DeskfuseExports implements NbdExportProvider {
  private readonly now: () => Date;

  constructor(private readonly deps: ExportsDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  logName(name: string): string {
    return redactExportName(name);
  }

  async list(): Promise<NbdExportEntry[]> {
    if (!this.deps.anonymousRead) {
      throw dfError('DF_ERR_FORBIDDEN', 'listing is off (a list carries no token); connect to IMAGE@REF:TOKEN or session/ID:SECRET, or start the server with --nbd-anonymous-read');
    }
    const out: NbdExportEntry[] = [];
    for (const img of await this.deps.catalog.listImages()) {
      for (const r of await this.deps.catalog.refs(img.name)) {
        if (!isConflictRef(r.name)) out.push({ name: `${img.name}@${r.name}`, description: `${img.name} ref ${r.name} (version ${r.version}), read-only` });
      }
    }
    return out;
  }

  async open(name: string, ctx: NbdOpenContext): Promise<NbdExport> {
    const { target, secret } = splitExportName(name);
    if (target.startsWith('session/')) return this.openSession(target.slice('session/'.length), secret, ctx);
    let spec: { image: string; rev: string };
    try {
      spec = parseImageRev(target);
    } catch (err) {
      throw unknown(target, err);
    }
    await this.checkReader(spec.image, spec.rev, secret);
    try {
      const v = await this.deps.catalog.resolve(spec.image, spec.rev);
      const index = await this.deps.catalog.index(spec.image, v.version);
      return new VersionExport(`${spec.image}@${spec.rev}`, `${spec.image}@${spec.rev}: version ${v.version} (${v.kind}), read-only`, index, this.deps.cache);
    } catch (err) {
      if (isDeskfuseError(err) && ['DF_ERR_IMAGE_NOT_FOUND', 'DF_ERR_REF_NOT_FOUND', 'DF_ERR_VERSION_NOT_FOUND'].includes(err.code)) throw unknown(target, err);
      throw err;
    }
  }

  /**
   * The admin token, or a desktop token of a desktop on `image` whose line holds `rev` (its refs, the
   * ref it follows, the versions they reach: src/auth/scope.ts); or nothing with anonymous read.
   */
  private async checkReader(image: string, rev: string, secret: string | undefined): Promise<void> {
    if (secret === undefined) {
      if (this.deps.anonymousRead) return;
      throw dfError('DF_ERR_UNAUTHORIZED', `export ${image}@… needs a token: IMAGE@REF:TOKEN`, { image });
    }
    const t = await this.deps.meta.tokens.findToken(hashToken(secret));
    if (!t) throw dfError('DF_ERR_UNAUTHORIZED', 'the token in the export name is not valid', { image });
    if (t.expiresAt !== null && t.expiresAt <= this.now().toISOString()) throw dfError('DF_ERR_TOKEN_EXPIRED', `the token expired at ${t.expiresAt}`, { image });
    if (t.scope === 'admin') return;
    const reader = await desktopReader(this.deps.meta, t.scope);
    if (reader?.image !== image) throw dfError('DF_ERR_FORBIDDEN', `a token of scope ${t.scope} may not read image ${image}`, { image, scope: t.scope });
    if (!(await reader.revVisible(rev))) throw dfError('DF_ERR_FORBIDDEN', `a token of scope ${t.scope} may not read ${image}@${rev}: it is not on the desktop's line`, { image, rev, scope: t.scope });
  }

  private async openSession(id: string, secret: string | undefined, ctx: NbdOpenContext): Promise<NbdExport> {
    let row;
    try {
      row = await this.deps.sessions.authorize(id, secret);
    } catch (err) {
      if (isDeskfuseError(err, 'DF_ERR_VDI_SESSION_NOT_FOUND')) throw unknown(`session/${id}`, err);
      throw err;
    }
    if (row.state !== 'open') {
      const v = row.outcome?.version;
      throw dfError('DF_ERR_NBD_EXPORT_UNKNOWN', `VDI session ${id} is ${row.state}${v ? ` as version ${v}` : ''}; create a new session`, { session: id, state: row.state });
    }
    // Its increment is on the server that made it: another server refuses, naming it.
    this.deps.sessions.checkOwner(row);
    const img = await this.deps.catalog.image(row.image);
    const name = `session/${id}`;
    const description = `VDI session of desktop ${row.desktop} over ${row.image}@${row.base}, writable`;
    if (ctx.purpose === 'info') return new SessionInfo(name, description, img.virtualSize);
    const inc = await this.deps.sessions.attach(id, ctx.remote);
    return new SessionExport(name, description, inc, (how) => this.deps.sessions.detach(id, how), () => this.deps.sessions.flushed(id));
  }
}

/** A session's disk: reads and writes go to its cloud increment; FUA and FLUSH make them durable. */
class SessionExport implements NbdExport {
  readonly readOnly = false;
  /** The session's connections share one increment: a FLUSH on any makes every completed write durable. */
  readonly multiConn = true;
  readonly blockSize = BLOCK_SIZE;
  readonly size: number;
  private closed = false;

  constructor(
    readonly name: string,
    readonly description: string,
    private readonly inc: CloudIncrement,
    private readonly onClose: (how: { clean: boolean; wrote: boolean }) => Promise<void>,
    /** After a FLUSH or FUA write made writes durable: the session checkpoints (debounced). */
    private readonly onFlushed: () => void,
  ) {
    this.size = inc.geometry.virtualSize;
  }

  read(offset: number, length: number): Promise<Buffer[]> { return this.inc.read(offset, length); }

  readInto(offset: number, out: Buffer): Promise<void> { return this.inc.readInto(offset, out); }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.inc.write(offset, data);
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number, fua: boolean): Promise<void> {
    await this.inc.zero(offset, length);
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    await this.inc.flush();
    this.onFlushed();
  }

  extents(offset: number, length: number): Extent[] { return this.inc.extents(offset, length); }

  async close(how: { clean: boolean; wrote: boolean }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.onClose(how);
  }
}

/** NBD_OPT_INFO on a session: its size and flags, without opening the increment. */
class SessionInfo implements NbdExport {
  readonly readOnly = false;
  readonly blockSize = BLOCK_SIZE;
  constructor(readonly name: string, readonly description: string, readonly size: number) {}
  read(): Promise<Buffer> { return Promise.reject(new Error('info only')); }
  write(): Promise<void> { return Promise.reject(new Error('info only')); }
  zero(): Promise<void> { return Promise.reject(new Error('info only')); }
  async flush(): Promise<void> {}
  async extents(): Promise<Extent[]> { return []; }
  async close(): Promise<void> {}
}

function unknown(target: string, cause: unknown) {
  return dfError('DF_ERR_NBD_EXPORT_UNKNOWN', `no export ${JSON.stringify(target)}: ${(cause as Error).message}`, { export: target }, cause);
}
