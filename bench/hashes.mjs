// Chunk-id candidates on 64 KiB chunks (the default chunk size), one thread: GB/s of input.
import { createHash, randomBytes } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';

const CHUNK = 64 * 1024;
const buf = randomBytes(256 * 1024 * 1024);
const rate = (name, fn) => {
  let best = Infinity;
  for (let r = 0; r < 3; r++) {
    const t = process.hrtime.bigint();
    for (let o = 0; o < buf.length; o += CHUNK) fn(buf.subarray(o, o + CHUNK));
    best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e9);
  }
  console.log(`| ${name} | ${(buf.length / best / 1e9).toFixed(2)} |`);
};
console.log('| chunk id (64 KiB chunks, 1 thread) | GB/s |\n|---|---|');
rate('BLAKE3-256 (@napi-rs/blake-hash, native)', (c) => blake3(c));
rate('SHA-256 (node:crypto, OpenSSL, SHA-NI)', (c) => createHash('sha256').update(c).digest());
