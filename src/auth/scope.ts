import { desktopRef, scopeDesktop } from '../desktop/desktops.js';
import { dfError } from '../errors.js';
import { checkDesktopName } from '../image/names.js';
import type { DesktopRow } from '../desktop/model.js';
import type { RefLogRow, RefRow, VersionRow } from '../image/model.js';
import type { Meta } from '../meta/repo.js';

/**
 * Token scopes and what a desktop token may read of its image.
 *
 *   admin               everything
 *   desktop:NAME        its desktop; of its image only its line (below), chunks by id
 *   hypervisor[:NAME]   VDI sessions it creates (vdi start), nothing else
 *   metrics             GET /metrics (a Prometheus scraper), nothing else
 *
 * A desktop's line is what a user's desktop holds, so one desktop's token must not read another's:
 * it sees the refs `desktops/NAME` (its own), `conflicts/desktops/NAME/…` (its commits that lost a
 * race) and the ref it follows (`main`, or what it was created from), and the versions reachable
 * from those refs' heads by walking parents. Everything else on the image (other desktops' refs and
 * the versions only they reach, test refs) is refused with DF_ERR_FORBIDDEN.
 */
export const HYPERVISOR_SCOPE = 'hypervisor';

export const METRICS_SCOPE = 'metrics';

export const isHypervisorScope = (scope: string): boolean => scope === HYPERVISOR_SCOPE || scope.startsWith(`${HYPERVISOR_SCOPE}:`);

/** A scope an admin may mint a token for: `admin`, `metrics`, `hypervisor`, `hypervisor:NAME`, `desktop:NAME`. */
export function checkScope(scope: string): string {
  const [kind, name, extra] = scope.split(':');
  const ok = extra === undefined && (
    ((kind === 'admin' || kind === METRICS_SCOPE) && name === undefined) ||
    (kind === HYPERVISOR_SCOPE && (name === undefined || /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name))) ||
    (kind === 'desktop' && name !== undefined && (checkDesktopName(name, 'scope'), true)));
  if (!ok) throw dfError('DF_ERR_BAD_REQUEST', `scope: expected admin, metrics, hypervisor[:NAME] or desktop:NAME, got ${JSON.stringify(scope)}`, { field: 'scope' });
  return scope;
}

/** What one desktop's token may see of its image. */
export class DesktopReader {
  private heads: number[] | undefined;

  constructor(private readonly meta: Pick<Meta, 'images'>, readonly desktop: DesktopRow) {}

  get image(): string {
    return this.desktop.image;
  }

  refVisible(name: string): boolean {
    const own = desktopRef(this.desktop.name);
    return name === own || name.startsWith(`conflicts/${own}/`) || name === this.desktop.follows;
  }

  /** The heads of its visible refs (read once per request). */
  private async visibleHeads(): Promise<number[]> {
    this.heads ??= (await this.meta.images.listRefs(this.image)).filter((r) => this.refVisible(r.name)).map((r) => r.version);
    return this.heads;
  }

  async versionVisible(version: number): Promise<boolean> {
    return this.meta.images.reachable(this.image, await this.visibleHeads(), version);
  }

  /** A rev as the API takes it: digits are a version number, anything else a ref name (catalog.resolve). */
  async revVisible(rev: string): Promise<boolean> {
    return /^\d+$/.test(rev) ? this.versionVisible(Number(rev)) : this.refVisible(rev);
  }

  refs(all: RefRow[]): RefRow[] {
    return all.filter((r) => this.refVisible(r.name));
  }

  refLog(all: RefLogRow[]): RefLogRow[] {
    return all.filter((e) => this.refVisible(e.ref));
  }

  async versions(limit: number): Promise<VersionRow[]> {
    return this.meta.images.ancestry(this.image, await this.visibleHeads(), limit);
  }
}

/** The reader of a desktop scope, or undefined for any other scope (admin reads all; the rest nothing). */
export async function desktopReader(meta: Pick<Meta, 'images' | 'desktops'>, scope: string): Promise<DesktopReader | undefined> {
  const name = scopeDesktop(scope);
  const d = name === undefined ? undefined : await meta.desktops.getDesktop(name);
  return d && new DesktopReader(meta, d);
}
