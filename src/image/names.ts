import { dfError } from '../errors.js';

/** Image names: lowercase, DNS-label-like, so they fit URLs, NBD export names and file names. */
const IMAGE_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
/** Ref names: slash-separated segments (`main`, `desktops/alice`, `conflicts/main/20261128T…`). */
const SEGMENT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function checkImageName(name: string): string {
  if (!IMAGE_RE.test(name)) {
    throw dfError('DF_ERR_BAD_REQUEST', `image name ${JSON.stringify(name)} must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit`, { field: 'name' });
  }
  return name;
}

/** Desktop names follow the image-name rule (they appear in refs `desktops/NAME` and token scopes). */
export function checkDesktopName(name: string, field = 'name'): string {
  if (!IMAGE_RE.test(name)) {
    throw dfError('DF_ERR_BAD_REQUEST', `desktop name ${JSON.stringify(name)} must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit`, { field });
  }
  return name;
}

export function refNameProblem(name: string): string | undefined {
  if (name.length === 0 || name.length > 200) return 'must be 1-200 characters';
  for (const seg of name.split('/')) {
    if (!SEGMENT_RE.test(seg) || seg.endsWith('.lock') || seg.includes('..')) return `segment ${JSON.stringify(seg)} is not allowed`;
  }
  return undefined;
}

export function checkRefName(name: string, field = 'ref'): string {
  const p = refNameProblem(name);
  if (p) throw dfError('DF_ERR_REF_NAME', `ref ${JSON.stringify(name)}: ${p}`, { field, ref: name });
  return name;
}

/** Refs under `conflicts/` are made only by the server when a commit loses a race. */
export function isConflictRef(name: string): boolean {
  return name.startsWith('conflicts/');
}

export function conflictRefName(ref: string, at: Date): string {
  const stamp = at.toISOString().replace(/[-:]/g, '').replace('.', '-');
  // Keep the name within the 200-character limit: long refs are cut (their ref log entry names them).
  const room = 200 - 'conflicts/'.length - 1 - stamp.length;
  const base = ref.length <= room ? ref : ref.slice(0, room).replace(/[/.]+$/, '');
  return `conflicts/${base}/${stamp}`;
}

/** `NAME`, `NAME@REF` or `NAME@VERSION` → parts (rev defaults to `main`). */
export function parseImageRev(spec: string): { image: string; rev: string } {
  const at = spec.indexOf('@');
  const image = at < 0 ? spec : spec.slice(0, at);
  const rev = at < 0 ? 'main' : spec.slice(at + 1);
  checkImageName(image);
  if (!/^\d+$/.test(rev)) checkRefName(rev, 'rev');
  return { image, rev };
}
