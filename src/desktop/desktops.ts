import { hashToken, newToken } from '../auth/tokens.js';
import { dfError } from '../errors.js';
import type { Catalog } from '../image/catalog.js';
import { checkDesktopName, checkImageName, checkRefName, isConflictRef } from '../image/names.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { DesktopMode, DesktopRow, LeaseRow } from './model.js';
import type { CommitOutcome } from '../image/model.js';
import type { Meta } from '../meta/repo.js';

/**
 * Desktops, their leases and their scoped tokens, over the catalog and the metadata repository.
 *
 * A desktop is an image plus a line: `persistent` has its own ref `desktops/NAME` (made at the head
 * of the image ref it is created from, advanced by its commits, moved back by a reset); `restore`
 * has none and follows an image ref. A lease is the single-writer claim of one endpoint or VDI
 * session, with a fencing number that grows with every new holder: a commit carrying a fencing
 * that is no longer current is kept as a conflict version and never moves the desktop's ref.
 */
export interface DesktopsDeps {
  meta: Pick<Meta, 'desktops' | 'images' | 'tokens'>;
  catalog: Catalog;
  log?: Logger;
  now?: () => Date;
}

export interface LeaseView {
  desktop: string;
  holder: string;
  fencing: number;
  since: string;
  expiresAt: string;
}

export interface DesktopView {
  name: string;
  image: string;
  mode: DesktopMode;
  follows: string;
  /** `desktops/NAME` for a persistent desktop, null for a restore one. */
  ref: string | null;
  /** The version a sync must reach: the head of `ref` (persistent) or of `follows` (restore). */
  head: number;
  /** The current, unexpired lease. */
  lease: LeaseView | null;
  createdAt: string;
}

export interface DesktopToken {
  token: string;
  scope: string;
  expiresAt: string;
}

export interface DesktopCommitRequest {
  parent: number | null;
  layer: string;
  kind: 'voi-commit' | 'vdi-commit';
  fencing: number;
  message?: string;
  holder?: string;
}

export const TOKEN_TTL = { default: 30 * 86400, min: 1, max: 365 * 86400 } as const;
export const LEASE_TTL = { default: 3600, min: 10, max: 86400 } as const;
/** An endpoint agent's lease: short, renewed while the endpoint lives, so a dead one frees its desktop soon. */
export const AGENT_LEASE_SECONDS = 300;
export const HOLDER_MAX = 200;

export const desktopRef = (name: string): string => `desktops/${name}`;
export const desktopScope = (name: string): string => `desktop:${name}`;
/** The desktop a token scope is bound to, or undefined (admin). */
export const scopeDesktop = (scope: string): string | undefined => (scope.startsWith('desktop:') ? scope.slice('desktop:'.length) : undefined);

export class Desktops {
  private readonly log: Logger;
  private readonly now: () => Date;

  constructor(private readonly deps: DesktopsDeps) {
    this.log = deps.log ?? silentLogger;
    this.now = deps.now ?? (() => new Date());
  }

  async create(req: { name: string; image: string; from?: string; mode?: DesktopMode }, author: string): Promise<DesktopView> {
    const name = checkDesktopName(req.name);
    const image = checkImageName(req.image);
    const from = checkRefName(req.from ?? 'main', 'from');
    const mode = req.mode ?? 'persistent';
    if (isConflictRef(from)) throw dfError('DF_ERR_REF_NAME', 'a desktop cannot follow a conflicts/ ref', { field: 'from', ref: from });
    if (await this.deps.meta.desktops.getDesktop(name)) throw exists(name);
    const head = (await this.deps.catalog.resolve(image, from)).version;
    const row: DesktopRow = { name, image, mode, follows: from, createdAt: this.now().toISOString() };
    // The desktop row and its ref are made in one transaction: a crash leaves both or neither.
    const out = await this.deps.meta.desktops.createDesktop(row, mode === 'persistent'
      ? { name: desktopRef(name), version: head, reason: `desktop create from ${from}@${head}`, author }
      : undefined);
    if (out.kind === 'exists') throw exists(name);
    if (out.kind === 'ref-exists') {
      throw dfError('DF_ERR_REF_MOVED', `image ${image} already has a ref ${desktopRef(name)} (at ${out.head}); choose another desktop name`, {
        image, ref: desktopRef(name), head: out.head, expected: null,
      });
    }
    this.log.info({ desktop: name, image, mode, follows: from, head, author }, 'desktop created');
    return this.view(name);
  }

  async get(name: string): Promise<DesktopRow> {
    const d = await this.deps.meta.desktops.getDesktop(name);
    if (!d) throw dfError('DF_ERR_DESKTOP_NOT_FOUND', `no desktop named ${JSON.stringify(name)}`, { desktop: name });
    return d;
  }

  async view(name: string): Promise<DesktopView> {
    return this.toView(await this.get(name));
  }

  async list(): Promise<DesktopView[]> {
    return Promise.all((await this.deps.meta.desktops.listDesktops()).map((d) => this.toView(d)));
  }

  /**
   * Move a persistent desktop's ref to the head of an image ref (compare-and-swap; the ref log keeps
   * the old line). `expect`: the head the caller saw (refused with DF_ERR_REF_MOVED otherwise).
   * Refused while a holder's lease is live (its work would land as a conflict) unless `force`.
   */
  async reset(name: string, to: string | undefined, author: string, opts: { expect?: number | null; force?: boolean } = {}): Promise<DesktopView & { dropped: number | null; overrode: LeaseView | null }> {
    const d = await this.get(name);
    if (d.mode === 'restore') throw restoreMode(d, 'reset');
    const target = checkRefName(to ?? d.follows, 'to');
    const v = (await this.deps.catalog.resolve(d.image, target)).version;
    const ref = desktopRef(name);
    const head = (await this.deps.meta.images.getRef(d.image, ref))?.version ?? null;
    if (opts.expect !== undefined && opts.expect !== head) {
      throw dfError('DF_ERR_REF_MOVED', `desktop ${name} is at version ${head ?? 'nothing'}, not at the expected ${opts.expect ?? 'nothing'}: nothing was reset`, {
        image: d.image, ref, head, expected: opts.expect,
      });
    }
    const lease = await this.liveLease(name);
    if (lease && !opts.force) {
      throw dfError('DF_ERR_LEASE_HELD', `desktop ${name} is in use: ${lease.holder} holds its lease since ${lease.since}; a reset now would turn its next commit into a conflict. Wait for it to commit, break the lease (desktop lease break ${name}), or reset --force`, {
        desktop: name, holder: lease.holder, since: lease.since, expiresAt: lease.expiresAt,
      });
    }
    await this.deps.catalog.moveRef(d.image, ref, v, opts.expect !== undefined ? opts.expect : head, author, `reset to ${target}@${v}`);
    this.log.info({ desktop: name, image: d.image, from: head, to: v, target, author, ...(lease ? { overrode: lease.holder } : {}) }, 'desktop reset');
    return { ...(await this.view(name)), dropped: head, overrode: lease };
  }

  async mintToken(name: string, ttlSeconds: number = TOKEN_TTL.default): Promise<DesktopToken> {
    await this.get(name);
    checkRange(ttlSeconds, TOKEN_TTL, 'ttlSeconds');
    const now = this.now();
    const token = newToken('dfd');
    const scope = desktopScope(name);
    const expiresAt = new Date(now.getTime() + ttlSeconds * 1000).toISOString();
    await this.deps.meta.tokens.addToken(hashToken(token), scope, now.toISOString(), expiresAt);
    this.log.info({ desktop: name, scope, expiresAt }, 'desktop token issued');
    return { token, scope, expiresAt };
  }

  /** Take or renew the lease; `takenFrom` names the live lease a forced take-over displaced. */
  async acquireLease(name: string, holder: string, ttlSeconds: number = LEASE_TTL.default, force = false): Promise<LeaseView & { takenFrom: LeaseView | null }> {
    await this.get(name);
    if (holder.length < 1 || holder.length > HOLDER_MAX) throw dfError('DF_ERR_BAD_REQUEST', `holder must be 1-${HOLDER_MAX} characters`, { field: 'holder' });
    checkRange(ttlSeconds, LEASE_TTL, 'ttlSeconds');
    const now = this.now();
    const out = await this.deps.meta.desktops.acquireLease(name, holder, now.toISOString(), new Date(now.getTime() + ttlSeconds * 1000).toISOString(), force);
    const l = out.lease;
    switch (out.kind) {
      case 'held':
        throw dfError('DF_ERR_LEASE_HELD', `desktop ${name} is held by ${l.holder} since ${l.since}; ask an admin to break the lease or retry with force`, {
          desktop: name, holder: l.holder, since: l.since, expiresAt: l.expiresAt,
        });
      case 'taken-over':
        this.log.warn({ desktop: name, holder, fencing: l.fencing, previous: { holder: out.previous.holder, fencing: out.previous.fencing, since: out.previous.since } }, 'lease taken over by force');
        break;
      case 'acquired':
        this.log.info({ desktop: name, holder, fencing: l.fencing, expiresAt: l.expiresAt }, 'lease acquired');
        break;
      case 'renewed':
        this.log.debug({ desktop: name, holder, fencing: l.fencing, expiresAt: l.expiresAt }, 'lease renewed');
        break;
    }
    return { ...leaseView(l)!, takenFrom: out.kind === 'taken-over' ? leaseView(out.previous) : null };
  }

  async releaseLease(name: string, fencing: number): Promise<{ released: true }> {
    await this.get(name);
    const out = await this.deps.meta.desktops.releaseLease(name, fencing);
    if (!out.released) {
      const c = out.current;
      throw dfError('DF_ERR_LEASE_LOST', `fencing ${fencing} is not the current lease of desktop ${name}${c?.holder ? `; it is held by ${c.holder} with fencing ${c.fencing}` : ''}`, {
        desktop: name, holder: c?.holder ?? null, fencing: c?.fencing ?? null,
      });
    }
    this.log.info({ desktop: name, fencing }, 'lease released');
    return { released: true };
  }

  async breakLease(name: string, author: string): Promise<{ broken: LeaseView | null }> {
    await this.get(name);
    const broken = await this.deps.meta.desktops.breakLease(name);
    if (broken) this.log.warn({ desktop: name, holder: broken.holder, fencing: broken.fencing, since: broken.since, author }, 'lease broken');
    return { broken: broken ? leaseView(broken) : null };
  }

  /**
   * Commit to a persistent desktop's ref under its lease. A stale `fencing` (another holder, a
   * released, broken or expired lease) keeps the version as a conflict; so does a stale parent.
   */
  async commit(name: string, req: DesktopCommitRequest, author: string): Promise<CommitOutcome> {
    const d = await this.get(name);
    if (d.mode === 'restore') throw restoreMode(d, 'commit');
    return this.deps.catalog.commit({
      image: d.image, parent: req.parent, ref: desktopRef(name), layer: req.layer, kind: req.kind,
      author: req.holder ?? author, message: req.message ?? '', fence: { desktop: name, fencing: req.fencing },
    });
  }

  private async toView(d: DesktopRow): Promise<DesktopView> {
    const ref = d.mode === 'persistent' ? desktopRef(d.name) : null;
    const head = (await this.deps.catalog.resolve(d.image, ref ?? d.follows)).version;
    return { name: d.name, image: d.image, mode: d.mode, follows: d.follows, ref, head, lease: await this.liveLease(d.name), createdAt: d.createdAt };
  }

  private async liveLease(name: string): Promise<LeaseView | null> {
    const l = await this.deps.meta.desktops.getLease(name);
    return l && l.holder !== null && l.expiresAt > this.now().toISOString() ? leaseView(l) : null;
  }
}

function leaseView(l: LeaseRow): LeaseView | null {
  return l.holder === null ? null : { desktop: l.desktop, holder: l.holder, fencing: l.fencing, since: l.since, expiresAt: l.expiresAt };
}

function exists(name: string) {
  return dfError('DF_ERR_DESKTOP_EXISTS', `desktop ${name} already exists`, { desktop: name });
}

function restoreMode(d: DesktopRow, what: 'commit' | 'reset') {
  return dfError('DF_ERR_RESTORE_MODE', `desktop ${d.name} is in restore mode (it follows ${d.image}@${d.follows} and discards local changes), so it cannot ${what}`, {
    desktop: d.name, follows: d.follows,
  });
}

function checkRange(n: number, r: { min: number; max: number }, field: string): void {
  if (!Number.isInteger(n) || n < r.min || n > r.max) throw dfError('DF_ERR_BAD_REQUEST', `${field} must be an integer from ${r.min} to ${r.max}, got ${n}`, { field });
}
