import { fstatSync, promises as fsp, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

/** A file's identity: a rebuild (write and rename, or in place) changes it. */
export const fileKey = (s: Stats) => `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;

interface Held {
  fh: FileHandle;
  key: string;
  size: number;
  users: number;
  stale: boolean;
  usedAt: number;
}

/** A descriptor no request used for this long is closed (a file deleted meanwhile frees its space). */
export const HELD_IDLE_MS = 10_000;

/**
 * Files served again and again (the boot stage, deltas: a storm asks for each hundreds of times a
 * minute), held open between requests: an open, fstat and close per request were three thread-pool
 * round trips of the event loop each. A held descriptor is checked at every use with one fstat on
 * the loop (no thread pool): a file rewritten in place (size or mtime changed), renamed over or
 * deleted (no link left) is let go and the path opened again. `forget` lets one go when its path is
 * known to name another file. A descriptor let go closes once its last user released it, and one
 * unused for HELD_IDLE_MS closes too.
 */
export class HeldFiles {
  private readonly held = new Map<string, Held>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly idleMs = HELD_IDLE_MS) {}

  /** The file at `p`, held open (call `release` once done with `fd`), or undefined when it is missing (or not a file). */
  async acquire(p: string): Promise<{ fd: number; size: number; key: string; release: () => void } | undefined> {
    let h = this.held.get(p);
    if (h) {
      let st: Stats | undefined;
      try {
        st = fstatSync(h.fh.fd);
      } catch {
        st = undefined;
      }
      if (!st || st.nlink === 0 || fileKey(st) !== h.key) {
        this.drop(p, h);
        h = undefined;
      }
    }
    if (!h) {
      const fh = await fsp.open(p, 'r').catch(() => undefined);
      const st = await fh?.stat().catch(() => undefined);
      if (!fh || !st?.isFile()) {
        await fh?.close();
        return undefined;
      }
      h = { fh, key: fileKey(st), size: st.size, users: 0, stale: false, usedAt: Date.now() };
      const other = this.held.get(p); // opened by another request meanwhile
      if (other) this.drop(p, other);
      this.held.set(p, h);
      this.sweeper ??= setInterval(() => this.sweep(), this.idleMs).unref();
    }
    const held = h;
    held.users++;
    held.usedAt = Date.now();
    let done = false;
    return {
      fd: held.fh.fd, size: held.size, key: held.key,
      release: () => {
        if (done) return;
        done = true;
        held.usedAt = Date.now();
        if (--held.users === 0 && held.stale) void held.fh.close().catch(() => undefined);
      },
    };
  }

  /** Let go of the descriptor held for `p` if it is of `key` (the path now names another file). */
  forget(p: string, key: string): void {
    const h = this.held.get(p);
    if (h && h.key === key) this.drop(p, h);
  }

  /** Descriptors held now (tests). */
  get size(): number {
    return this.held.size;
  }

  /** Closes every descriptor no request is using (the rest as their users release them). */
  close(): void {
    for (const [p, h] of [...this.held]) this.drop(p, h);
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  private sweep(): void {
    const now = Date.now();
    for (const [p, h] of [...this.held]) if (h.users === 0 && now - h.usedAt >= this.idleMs) this.drop(p, h);
    if (this.held.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  private drop(p: string, h: Held): void {
    if (this.held.get(p) === h) this.held.delete(p);
    if (h.stale) return;
    h.stale = true;
    if (h.users === 0) void h.fh.close().catch(() => undefined);
  }
}
