import type { SignedHeadAnswer } from '../api/schemas.js';
import { dfError } from '../errors.js';
import { verifyTarget, type SignedHead, type VerifiedTarget } from '../sign/verify.js';
import type { AgentOptions, Session } from './session.js';
import type { DiskState } from './state-area.js';

/** A signed head older than this is refused by default (seconds): the server's default expiry. */
export const DEFAULT_MAX_HEAD_AGE_SECONDS = 86_400;

/**
 * Where the server says this desktop's disk must go, verified (src/sign/verify.ts) before the run
 * writes a byte: the disk's own trusted keys when it has some, else the boot stage's (o.trust), else
 * the server's first key on first use. A server that sends no signed head is refused like a stripped one.
 */
export async function signedTarget(s: Session, o: AgentOptions, state: DiskState | null): Promise<VerifiedTarget> {
  const r = await s.client.json<SignedHeadAnswer>('GET', `/api/v1/desktops/${encodeURIComponent(s.desktop.name)}/signed-head`, { accept: [404] })
    .catch((err: unknown) => {
      // A body that is not JSON (stripped, replaced) is no signature.
      if (err instanceof SyntaxError) return null;
      throw err;
    });
  if (!r || r.status === 404) throw dfError('DF_ERR_SIG_MISSING', `the server sent no signed head for desktop ${s.desktop.name}`, { desktop: s.desktop.name });
  const onDisk = state?.trustKeys ?? [];
  return verifyTarget(r.body as SignedHead, {
    desktop: s.desktop.name, image: s.image.name,
    trusted: onDisk.length ? onDisk : o.trust ?? [],
    diskVersion: floorOf(state),
    now: (o.now ?? (() => new Date()))(),
    maxAgeSeconds: o.maxHeadAgeSeconds ?? DEFAULT_MAX_HEAD_AGE_SECONDS,
  });
}

/**
 * The version below which a sync needs a signed rollback: the floor the disk recorded; on a disk from
 * before signing, its version, unless that is a conflict it committed (the line's head may be older).
 */
export function floorOf(state: DiskState | null): number | null {
  if (!state) return null;
  if (state.floor) return state.floor;
  return state.version !== null && state.lastConflict !== state.version ? state.version : null;
}

/** The trusted keys changed (a rotation reached through the chain, or first use). */
export function keysChanged(state: DiskState, keys: Buffer[]): boolean {
  const had = state.trustKeys ?? [];
  return had.length !== keys.length || had.some((k, i) => !k.equals(keys[i]!));
}
