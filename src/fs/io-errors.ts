import { dfError, isDeskfuseError, type DeskfuseError } from '../errors.js';

/**
 * System errors of the server's own storage, as coded errors. "No space" (ENOSPC, or EDQUOT: the
 * quota of the user the server runs as) is DF_ERR_NO_SPACE (HTTP 507, RFC 4918 §11.5): the client
 * can retry once someone frees space. Anything else (EIO, EMFILE, EACCES, ELOOP…) is DF_ERR_STORE_IO:
 * never "absent", never an uncoded 500.
 */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/** The errno name of a system error (`ENOSPC`), or undefined. */
export function errnoName(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

export function isNoSpace(err: unknown): boolean {
  return NO_SPACE.has(errnoName(err) ?? '');
}

/**
 * `err` (from `op` on `what`, e.g. 'write' 'chunk 1a2b…') as a coded error; coded errors pass through.
 * The message names no server path (clients read it); the system error stays the `cause` for the log.
 */
export function storeIoError(err: unknown, op: string, what: string): DeskfuseError {
  if (isDeskfuseError(err)) return err;
  const errno = errnoName(err) ?? 'unknown';
  if (isNoSpace(err)) {
    return dfError('DF_ERR_NO_SPACE', `the server's store is full (${errno} on ${op} of ${what}); free space on the server and retry`, { errno, op }, err);
  }
  return dfError('DF_ERR_STORE_IO', `the server's store failed: ${errno} on ${op} of ${what}`, { errno, op }, err);
}
