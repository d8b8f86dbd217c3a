import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, writeSync, ftruncateSync } from 'node:fs';

/** Deterministic bytes (xorshift32) so tests are reproducible. */
export function prng(seed: number): (n: number) => Buffer {
  let s = seed >>> 0 || 1;
  return (n) => {
    const b = Buffer.alloc(Math.ceil(n / 4) * 4);
    for (let i = 0; i < b.length; i += 4) {
      s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
      b.writeUInt32LE(s, i);
    }
    return b.subarray(0, n);
  };
}

/** Compressible-ish data: random words repeated, like binaries and text. */
export function textish(rand: (n: number) => Buffer, n: number): Buffer {
  const words = Array.from({ length: 64 }, (_, i) => rand(3 + (i % 13)).toString('hex'));
  const sel = rand(n);
  const parts: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const w = words[sel[i % n]! % 64]!;
    parts.push(w, ' ');
    len += w.length + 1;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

/**
 * A sparse raw disk: `size` bytes, data regions written at the given offsets, everything else a
 * hole. Returns nothing; the file is created or truncated.
 */
export function makeDisk(file: string, size: number, regions: Array<{ at: number; data: Buffer }>): void {
  const fd = openSync(file, 'w');
  try {
    ftruncateSync(fd, size);
    for (const r of regions) writeSync(fd, r.data, 0, r.data.length, r.at);
  } finally {
    closeSync(fd);
  }
}

export function patch(file: string, at: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, at);
  } finally {
    closeSync(fd);
  }
}

/** sha256 of the first `bytes` bytes of a disk file or device: a disk's image region (the state area follows). */
export function sha256Prefix(file: string, bytes: number): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(4 * 1024 * 1024);
  try {
    for (let off = 0; off < bytes; off += buf.length) h.update(buf.subarray(0, readSync(fd, buf, 0, Math.min(buf.length, bytes - off), off)));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

export function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** A typical test image: 32 MiB virtual, ~9 MiB of data in several extents, some zero runs inside. */
export function baseDisk(file: string, seed = 1): void {
  const r = prng(seed);
  const MiB = 1024 * 1024;
  makeDisk(file, 32 * MiB, [
    { at: 0, data: r(1 * MiB) },
    { at: 2 * MiB + 4096 * 3, data: textish(r, 3 * MiB) },
    { at: 8 * MiB, data: Buffer.concat([r(512 * 1024), Buffer.alloc(256 * 1024), r(512 * 1024)]) },
    { at: 20 * MiB, data: textish(r, 3 * MiB + 1234) },
    { at: 32 * MiB - 64 * 1024, data: r(64 * 1024) },
  ]);
}
