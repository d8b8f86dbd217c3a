import { createServer } from 'node:net';
import { dfError, isDeskfuseError } from '../src/errors.js';

/** A TCP address the server listens on, and the option that chooses it (named in the error). */
export interface ListenTarget {
  service: string;
  host: string;
  port: number;
  /** What to tell the user to change: `--listen HOST:PORT`. */
  advice: string;
}

const REASONS: Record<string, string> = {
  EADDRINUSE: 'the address is already in use (another deskfuse server, or another program, listens there)',
  EACCES: 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)',
  EADDRNOTAVAIL: 'no interface of this machine has that address',
};

/** A bind failure as DF_ERR_LISTEN naming the service, its address and port, and what to change. */
export function listenError(t: ListenTarget, err: unknown): Error {
  if (isDeskfuseError(err)) return err;
  const code = (err as { code?: string }).code ?? '';
  const reason = REASONS[code];
  if (!reason) return err as Error;
  return dfError('DF_ERR_LISTEN', `${t.service} cannot listen on ${t.host}:${t.port}: ${reason}; ${t.advice}`,
    { service: t.service, host: t.host, port: t.port, reason: code }, err);
}

/**
 * Bind and release each address before the server creates anything (data directory, admin token):
 * a start that cannot listen fails with DF_ERR_LISTEN and leaves the disk as it was.
 * (A port taken between this check and the real listen still fails, with the same error, just later.)
 */
export async function probeListen(targets: readonly ListenTarget[]): Promise<void> {
  for (const t of targets) {
    if (t.port === 0) continue; // any free port: nothing to check
    await new Promise<void>((resolve, reject) => {
      const s = createServer();
      s.once('error', (err) => reject(listenError(t, err)));
      s.listen({ host: t.host, port: t.port, exclusive: true }, () => s.close(() => resolve()));
    });
  }
}
