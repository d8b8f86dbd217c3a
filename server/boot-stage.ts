import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import { fileKey } from '../src/fs/held-files.js';

export const STAGE_FILES = ['vmlinuz', 'initrd.img'] as const;
export type StageFile = (typeof STAGE_FILES)[number];
/** Hex digits of SHA-256 in a stage URL: 128 bits, as a content id needs. */
export const STAGE_HASH_HEX = 32;

interface Known {
  key: string;
  hash: Promise<string>;
  /** The last answer, and when the file was last seen unchanged (ms). */
  last?: { hash: string; size: number; key: string };
  checkedAt?: number;
}

/** How long an answer is reused without looking at the file again: a rebuild shows within a second. */
export const STAGE_RECHECK_MS = 1000;

/**
 * The content hash of each boot-stage file, for its immutable URL `/boot/stage/<hash>/<file>`: any
 * HTTP cache may keep that answer forever, and a rebuilt stage gets a new URL (no purge). Computed
 * once per (inode, size, mtime) and kept in memory; a rebuilt file is hashed again at its next use.
 * The ~34 MB initramfs is hashed as a stream of 1 MiB reads (about a millisecond of the loop each),
 * and concurrent callers share one computation.
 */
export class BootStageHashes {
  private readonly known = new Map<StageFile, Known>();

  constructor(private readonly dir: string) {}

  /**
   * The file's current hash, size and identity (keyOf); undefined when it is missing. A storm asks
   * for it several times per boot: within STAGE_RECHECK_MS of a check the answer is reused unstat'ed,
   * unless the caller holds a descriptor of another file (`opened`: its keyOf).
   */
  async current(file: StageFile, opened?: string): Promise<{ hash: string; size: number; key: string } | undefined> {
    const seen = this.known.get(file);
    // `opened`: the identity of a descriptor the caller holds; another one means look now.
    const fresh = seen?.last && seen.checkedAt !== undefined && Date.now() - seen.checkedAt < STAGE_RECHECK_MS;
    if (fresh && (opened === undefined || opened === seen.last!.key)) return seen.last;
    const p = path.join(this.dir, file);
    const s = await fsp.stat(p).catch(() => undefined);
    if (!s?.isFile()) return undefined;
    const key = keyOf(s);
    let k = this.known.get(file);
    if (k?.key !== key) {
      k = { key, hash: hashFile(p) };
      this.known.set(file, k);
      // A failed read is not remembered: the next caller tries again.
      k.hash.catch(() => this.known.get(file) === k && this.known.delete(file));
    }
    const hash = await k.hash;
    // Changed while it was read (a rebuild in place): hash what is there now.
    const after = await fsp.stat(p).catch(() => undefined);
    if (!after || keyOf(after) !== key) return this.current(file);
    k.last = { hash, size: s.size, key };
    k.checkedAt = Date.now();
    return k.last;
  }

  /** The URL path of each file (its hashed one; the plain one while it is missing). */
  async paths(): Promise<Record<StageFile, string>> {
    const [k, i] = await Promise.all(STAGE_FILES.map(async (f) => {
      const c = await this.current(f).catch(() => undefined);
      return c ? `/boot/stage/${c.hash}/${f}` : `/boot/${f}`;
    }));
    return { vmlinuz: k!, 'initrd.img': i! };
  }
}

/** A file's identity: a rebuild (write and rename, or in place) changes it. */
export const keyOf: (s: Stats) => string = fileKey;

async function hashFile(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(p, { highWaterMark: 1024 * 1024 })) h.update(b as Buffer);
  return h.digest('hex').slice(0, STAGE_HASH_HEX);
}

