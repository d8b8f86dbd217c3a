import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { dfError } from '../errors.js';

/**
 * The native addon (native/*.c, built by scripts/build-native.mjs into
 * dist/native/deskfuse_native.node): socket options Node lacks (SO_BINDTODEVICE, raw ICMPv6),
 * lseek SEEK_DATA/SEEK_HOLE, zero-copy sendfile(2) and XXH3-128 fingerprints. Calls throw Errors with `code` (errno name), `errno` and `syscall`.
 */
export interface Native {
  /** UDPv4 socket bound to 0.0.0.0:port and to the device; nonblocking; `rcvbuf` bytes of receive buffer (forced past net.core.rmem_max when privileged). Give it to dgram's bind({fd}). */
  udpSocket(ifname: string, port: number, opts: { broadcast: boolean; reuseAddr: boolean; rcvbuf?: number }): number;
  ifIndex(ifname: string): number;
  /** Raw ICMPv6 socket on the device, in ff02::2, hop limit 255, passing only `types` (default [133]: Router Solicitations), 1 s receive timeout (blocking). */
  icmp6Socket(ifname: string, types?: number[]): number;
  /** One datagram (ICMPv6 message, no IP header) or null after the 1 s timeout. Blocks: not on the main thread in a server. */
  icmp6Recv(fd: number): { data: Buffer; from: string } | null;
  icmp6Send(fd: number, ifindex: number, dest: string, data: Buffer): number;
  /** lseek SEEK_DATA / SEEK_HOLE; -1 when offset is past the last data (ENXIO). */
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  close(fd: number): void;
  /** A second descriptor of the same open file or socket (fcntl F_DUPFD_CLOEXEC). */
  dup(fd: number): number;
  /**
   * Send `length` bytes of the file from `offset` to the TCP socket with sendfile(2), on the addon's
   * sender thread (native/sendfile.c); both fds are dup()ed at the call. `cb` gets (null, sent) or
   * (Error{code: EPIPE | ECONNRESET | ETIMEDOUT (no progress for idleMs) | ENODATA (file too short)}, sent).
   * Nothing else may write to the socket until `cb` ran.
   */
  sendfile(sockFd: number, fileFd: number, offset: number, length: number, idleMs: number, cb: (err: NodeJS.ErrnoException | null, sent: number) => void): void;
  /**
   * Send a body made of parts, in order, on the same sender thread: a Buffer as it is (copied at the
   * call), `[path, size]` the whole file at `path`, opened when its turn comes (ENOENT if gone, ESTALE
   * unless it is exactly `size` bytes). Errors as sendfile's.
   */
  sendParts(sockFd: number, parts: Array<Buffer | [path: string, size: number]>, idleMs: number, cb: (err: NodeJS.ErrnoException | null, sent: number) => void): void;
  /**
   * A pack body (src/chunk/pack.ts) whose frames are a local chunk store's files
   * (`<root>/<id[0..3]>/<id>.zst`): `meta` is the pack without its frames (header, 40-byte record
   * heads, trailer); each head names its file and that file's size. Errors as sendParts'.
   */
  sendPack(sockFd: number, meta: Buffer, root: string, idleMs: number, cb: (err: NodeJS.ErrnoException | null, sent: number) => void): void;
  /** The sender closes the part files it keeps open (files were removed or quarantined). */
  sendForget(): void;
  /**
   * XXH3-128 of `data`, big-endian (high half first), into out[at, at + 16) (native/fingerprint.c).
   * Not an id: the scan's cheap test of whether a chunk changed since its id was recorded.
   */
  fingerprint(data: Uint8Array, out: Uint8Array, at: number): void;
  /**
   * fingerprint() of `count` chunks of the file `fd` from byte `start` (chunkSize bytes each, the last
   * lastLength) into out[outAt, outAt + 16 count), on libuv's thread pool; with `holes`, chunks with no
   * data (SEEK_DATA) are not read. Past the end of the file reads as zeros. cb(err, bytesRead).
   */
  fingerprintFile(fd: number, start: number, chunkSize: number, count: number, lastLength: number, holes: boolean, out: Uint8Array, outAt: number,
    cb: (err: NodeJS.ErrnoException | null, bytesRead: number) => void): void;
  /** glibc mallopt: a fixed mmap threshold (bytes; 0 = leave) and an arena cap (0 = leave); false: not glibc, nothing done. */
  mallocTune(mmapThreshold: number, arenaMax: number): boolean;
  /** glibc malloc_trim(0): free pages of every arena back to the system; false: not glibc. */
  mallocTrim(): boolean;
  /** The sender's token bucket over every body it sends, in bytes per second (0: no cap). */
  sendRate(bytesPerSecond: number): void;
  /** Bodies in progress, bytes sent, turns that waited for the bucket, the rate. */
  sendStats(): { active: number; bytes: number; throttled: number; rate: number };
}

/**
 * Compiled, this module is dist/src/native/addon.js and the addon sits in dist/native/; run from
 * source (vitest), it is src/native/addon.ts and the addon is the built one in dist/native/.
 */
const CANDIDATES = [
  path.resolve(import.meta.dirname, '../../native/deskfuse_native.node'),
  path.resolve(import.meta.dirname, '../../dist/native/deskfuse_native.node'),
];
export const DEFAULT_NATIVE_PATH = CANDIDATES.find((f) => existsSync(f)) ?? CANDIDATES[0]!;

const cache = new Map<string, Native>();

/** The addon, loaded once. `DESKFUSE_NATIVE` (a path) overrides where it is looked for (the initramfs). */
export function loadNative(file = process.env.DESKFUSE_NATIVE || DEFAULT_NATIVE_PATH): Native {
  const hit = cache.get(file);
  if (hit) return hit;
  if (!existsSync(file)) {
    throw dfError('DF_ERR_NATIVE_MISSING', `the native addon ${file} is missing: build it with \`npm run build\` (needs gcc and libc6-dev: apt-get install gcc libc6-dev), or set DESKFUSE_NATIVE to its path`, { path: file });
  }
  let native: Native;
  try {
    native = createRequire(import.meta.url)(file) as Native;
  } catch (err) {
    throw dfError('DF_ERR_NATIVE_MISSING', `the native addon ${file} does not load (${(err as Error).message}): rebuild it with \`npm run build\``, { path: file }, err);
  }
  cache.set(file, native);
  return native;
}
