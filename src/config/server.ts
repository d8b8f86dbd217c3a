import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { hostname } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseS3Url, type S3Location } from '../chunk/s3-url.js';
import type { S3Credentials } from '../chunk/s3-sigv4.js';
import { dfError, isDeskfuseError } from '../errors.js';
import { DEFAULT_RETENTION_POLICY, POLICY_RANGES } from '../image/retention.js';
import { maskUrl } from '../meta/engine.js';
import { TFTP_DEFAULTS } from '../tftp/slots.js';
import { HTTPS_PORT, loadTls, type TlsConfig } from './tls.js';
import { checkKeys } from './keys.js';

/**
 * Server configuration: one schema with documented defaults. load = defaults < file < env < flags,
 * every problem reported at once, then deep-frozen and passed down.
 */
export interface ServerConfig {
  /** Where metadata (SQLite), chunks, blobs and the admin token live. Default `./data`. */
  readonly dataDir: string;
  /**
   * Where the metadata lives: null = SQLite in `<dataDir>/meta.sqlite` (the embedded default, one
   * server); a `postgres://USER:PASS@HOST:PORT/DB` URL = PostgreSQL, shared by several servers.
   */
  readonly meta: string | null;
  /**
   * This server's name among several on one metadata database: a VDI session's row names the server
   * that hosts its NBD export (its cloud increment is local there). Default: the machine's host name.
   */
  readonly serverName: string;
  /** HTTP listen address. Default 127.0.0.1:8080 (give 0.0.0.0:8080 to serve a network). */
  readonly listen: { readonly host: string; readonly port: number };
  /** pino level. Default `info` (one line per state change; each HTTP request at `debug`). */
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** `pretty` (one readable line per entry), `json` (one JSON object per line), `auto` (default: pretty on a terminal, else json). */
  readonly logFormat: 'auto' | 'pretty' | 'json';
  /** A second HTTP listener serving only `GET /metrics`, without a token (Prometheus on a trusted network). Default null (off). */
  readonly metricsListen: { readonly host: string; readonly port: number } | null;
  /** Largest layer upload, bytes (other routes have their own limits, server/limits.ts). Default 256 MiB. */
  readonly bodyLimit: number;
  readonly netboot: NetbootConfig;
  readonly nbd: NbdConfig;
  readonly enrolment: EnrolmentConfig;
  readonly retention: RetentionConfig;
  readonly gc: GcConfig;
  readonly scrub: ScrubConfig;
  readonly packCache: PackCacheConfig;
  readonly admission: AdmissionConfig;
  readonly tftp: TftpConfig;
  readonly store: StoreConfig;
  /** HTTPS (src/config/tls.ts). */
  readonly tls: TlsConfig;
  /** Signed versions (src/sign/, server/signing.ts). */
  readonly signing: SigningConfig;
}

/**
 * TFTP transfers at once (src/tftp/slots.ts). Past `maxTransfers` a request waits in line and starts
 * when a slot frees (its retransmissions are dropped meanwhile); past `maxQueued` it is answered
 * ERROR 0 "server busy" — the last resort, as PXE firmware gives up on an ERROR.
 */
export interface TftpConfig {
  /**
   * Transfers running at once, 1-10000. Default 32: a transfer buffers up to 2 · windowsize · blksize
   * (8 MiB at the largest options a client may negotiate), so 32 bound that to 256 MiB; PXE ROMs
   * (blksize ≤ 1468, window 1) hold a few KiB each and fetch an iPXE binary in well under a second
   * on a LAN, so a 500-machine storm drains in seconds.
   */
  readonly maxTransfers: number;
  /** Requests waiting for a slot, 0-100000 (0: refuse at once). Default 1000 (twice a 500-machine storm). */
  readonly maxQueued: number;
}

/**
 * Where chunks, layers, chunk indexes and per-version deltas live (src/chunk/open-stores.ts).
 * Config-file keys `store`, `storeCacheMiB`, `storeRetrySeconds`, `storeCredentials`.
 */
export interface StoreConfig {
  /**
   * null (default): the local store under the data directory. Else an S3 bucket shared by every
   * server: `--store s3://BUCKET/PREFIX?endpoint=URL&region=R` (env DESKFUSE_STORE, file `store`).
   * Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN) or the file's
   * `storeCredentials: {accessKeyId, secretAccessKey, sessionToken?}`; the secret is a
   * non-enumerable property, so printing or serializing the config never shows it.
   */
  readonly s3: { readonly url: string; readonly location: S3Location; readonly credentials: S3Credentials } | null;
  /**
   * With S3: the local disk cache in front of the bucket, MiB (`<data>/store-cache`; chunks, plus an
   * eighth of it for layers and indexes). File `storeCacheMiB`, env DESKFUSE_STORE_CACHE_MIB. Default 4096.
   */
  readonly cacheMiB: number;
  /**
   * With S3: how long one S3 call keeps retrying an engine that does not answer or answers 5xx
   * (a radosgw restart) before the request fails with DF_ERR_S3_UNREACHABLE (503), seconds.
   * File `storeRetrySeconds`, env DESKFUSE_STORE_RETRY_SECONDS. Default 120.
   */
  readonly retrySeconds: number;
}

/** Signed versions: how long the freshness stamp an endpoint gets with its sync target holds. */
export interface SigningConfig {
  /** Seconds a signed head (the version to sync to, TUF's timestamp) is valid from its issue. Default 86400 (24 h). */
  readonly headSeconds: number;
}

/** Unknown MACs asking /boot/ipxe (anyone on the boot network can): how many become rows, how fast, how long. */
export interface EnrolmentConfig {
  /** Most pending endpoints at once; past it an unknown MAC gets the pending answer but no row. Default 1000. */
  readonly pendingMax: number;
  /** New endpoint rows (pending or auto-enrolled) per minute, all MACs together; past it, as above. Default 60. */
  readonly perMinute: number;
  /** A pending endpoint not seen for this long is deleted (if it asks again it is pending anew). Default 86400 (1 day). */
  readonly pendingSeconds: number;
}

/** Housekeeping: what the server deletes, and how often it looks (server/services/prune.ts). */
export interface RetentionConfig {
  /** Seconds between two prunes; 0 = never. Default 3600. */
  readonly intervalSeconds: number;
  /** Boot events older than this are deleted. Default 2592000 (30 days). */
  readonly eventsSeconds: number;
  /** Tokens expired longer ago than this are deleted (until then they answer DF_ERR_TOKEN_EXPIRED). Default 604800 (7 days). Used or expired boot tokens go at every prune. */
  readonly tokensSeconds: number;
  /**
   * Versions (src/image/retention.ts; an image's own policy, `deskfuse image policy`, overrides these):
   * keep the last `keepLast` versions of each ref's line (default 10, at least 1), every version younger
   * than `keepDays` days (default 14), a conflict's version `conflictDays` days (default 30). Versions a
   * ref, desktop, lease, unfinished VDI session or endpoint's disk holds are always kept.
   */
  readonly keepLast: number;
  readonly keepDays: number;
  readonly conflictDays: number;
  /** A delta file no sync asked for in this many days is deleted (it is rebuilt on demand); 0 = only with its version. Default 30. */
  readonly deltaIdleDays: number;
  /** 1 (default): the timer prunes every image's versions; 0: only `deskfuse image prune` does (deltas still go when idle). */
  readonly pruneVersions: number;
}

/**
 * Garbage collection of the stores (src/gc/gc.ts; server/services/gc.ts runs it): chunks, layers, chunk
 * indexes and deltas no version, VDI checkpoint or in-flight commit reaches. An object goes on the
 * second run that finds it unreferenced and older than the grace period.
 */
export interface GcConfig {
  /** Seconds between two runs (the first one interval after start); 0 = never (run `deskfuse store gc`). Default 86400 (daily). */
  readonly intervalSeconds: number;
  /** Unreferenced objects younger than this stay: it must be longer than the longest upload (a client uploads before it commits). Default 86400 (24 h). */
  readonly graceSeconds: number;
  /** The run's lock lease in the database (renewed every third of it): how soon another server takes over after a crash. Default 60. */
  readonly leaseSeconds: number;
}

/**
 * The local chunk store is served as stored (a batch fetch reads frames without opening them; the agent
 * verifies each), so a background pass reads every chunk back, decompresses and hashes it, and moves a
 * corrupt one to <data>/quarantine/ (server/services/scrub.ts).
 */
export interface ScrubConfig {
  /** Seconds from the start of one pass to the next; 0 = never. Default 86400 (daily). */
  readonly intervalSeconds: number;
  /** Read rate of a pass, MiB of stored frames per second (the disk and the workers stay for serving). Default 32. */
  readonly mibPerSecond: number;
}

/**
 * Batch fetches asked for twice are kept as files (src/chunk/pack-cache.ts), so a storm of endpoints
 * provisioning one version is served pack files with sendfile(2), as a static web server would.
 */
export interface PackCacheConfig {
  /** Disk for them under <data>/pack-cache/, MiB; 0 = off. Default 2048 (about ten 200 MiB versions). */
  readonly mib: number;
}

/**
 * Clients making heavy transfers (batch fetches, deltas, chunk and patch uploads) at once: past
 * `heavyTransfers`, a new client is answered 503 DF_ERR_BUSY with Retry-After and its place in line
 * (server/admission.ts); the boot script, the boot stage and small API calls are never refused.
 */
export interface AdmissionConfig {
  /** Most clients transferring at once; 0 = no limit. Default 16 (an agent has two batch fetches of up to 32 MiB in flight). */
  readonly heavyTransfers: number;
  /** Seconds a refused client is told to wait (Retry-After). Default 5. */
  readonly retryAfterSeconds: number;
  /**
   * The uplink a storm may fill: a token bucket over every body sent from files (boot stage, deltas,
   * chunk packs; the bulk of the bytes), in Mbit/s; 0 = no cap (default).
   */
  readonly maxMbitPerSecond: number;
}

/** The NBD server for the hypervisor pool: image versions read-only, VDI sessions writable. */
export interface NbdConfig {
  /** Default: the HTTP listen host, port 10809 (IANA's NBD port); null = off (`--nbd-listen off`). */
  readonly listen: { readonly host: string; readonly port: number } | null;
  /** Image exports readable (and listed) without a token. Default off: every export name carries a token. */
  readonly anonymousRead: boolean;
  /** Host name hypervisors use to reach NBD, for the URLs the API hands out. Default: the host the API was called on. */
  readonly publicHost: string | null;
  /** Disk (and page cache) for verified raw chunks served over NBD, MiB (`<data>/nbd-cache`, made anew at start). Default 4096. */
  readonly cacheMiB: number;
  /** Lease TTL of a VDI session, seconds; renewed while a client is connected. Default 3600. */
  readonly leaseSeconds: number;
  /**
   * Least seconds between two checkpoints of a VDI session (after a FLUSH, its changed chunks go to the
   * chunk store as a staged layer another server can commit if this one dies). Default 10.
   */
  readonly checkpointSeconds: number;
  /**
   * Seconds between two heartbeats of a VDI session a client is connected to; another server takes the
   * session over (commit, discard) only once it is 3 heartbeats old. Same value on every server. Default 10.
   */
  readonly heartbeatSeconds: number;
  /**
   * NBD over TLS (NBD_OPT_STARTTLS, proto.md "TLS support"), with the server's certificate
   * (src/tls/pki.ts): `off` (NOTLS), `on` (SELECTIVETLS: a client may upgrade, plaintext still
   * served), `required` (FORCEDTLS: nothing but STARTTLS and ABORT in clear). Default (null): follow
   * the server's TLS: `required` when it has TLS material, `off` otherwise (see resolveNbdTls).
   */
  readonly tls: 'off' | 'on' | 'required' | null;
  /** Pre-shared keys for TLS-PSK clients, the `identity:hexkey` lines psktool writes; null: x509 only. */
  readonly tlsPskFile: string | null;
  /**
   * Worker threads serving read-only version exports (0: all on the main thread). Default (null): the
   * cores, at most 4. Env DESKFUSE_NBD_THREADS.
   */
  readonly threads: number | null;
}

/** The NBD TLS mode in effect: the configured one, else `required` exactly when the server has TLS material. */
export function resolveNbdTls(nbd: Pick<NbdConfig, 'tls'>, serverHasTls: boolean): 'off' | 'on' | 'required' {
  return nbd.tls ?? (serverHasTls ? 'required' : 'off');
}

/** Network boot: DHCP/proxyDHCP, TFTP, IPv6 RA on the boot interface, and what /boot serves. */
export interface NetbootConfig {
  /** `off` (default: the site's DHCP points at us), `proxy` (answer PXE clients only, beside the site's DHCP), `full` (address pool, isolated labs). */
  readonly dhcp: 'off' | 'proxy' | 'full';
  /** The boot interface: DHCP, TFTP replies and RAs go out on it only. Required unless dhcp is off. */
  readonly interface: string | null;
  /** Address pool for `full`: first and last address. */
  readonly dhcpRange: { readonly first: string; readonly last: string } | null;
  /** TFTP for firmware that needs it (iPXE binaries). Default 0.0.0.0:69 when dhcp is on; off otherwise unless given. */
  readonly tftpListen: { readonly host: string; readonly port: number } | null;
  /** Base URL endpoints use to reach the HTTP server (http://10.0.0.1:8080). Default: the request's Host. */
  readonly publicUrl: string | null;
  /** Where the boot stage lives (vmlinuz, initrd.img): `npm run build:initramfs` output. */
  readonly bootDir: string;
  /** Where the TFTP root (copies of the iPXE binaries) lives. Default <dataDir>/tftp. */
  readonly tftpRoot: string | null;
  /** Send IPv6 router advertisements (lifetime 0) so iPXE stops waiting for one. Default on with DHCP. */
  readonly ipv6Ra: boolean;
  /** Enrol unknown endpoints at once (optionally with this desktop) instead of waiting for approval. */
  readonly autoEnrol: false | { readonly desktop?: string };
  /** Extra kernel parameters for the boot stage (consoles). */
  readonly kernelArgs: string;
  /** Seconds a waiting endpoint (pending, no desktop) waits before asking again. */
  readonly retrySeconds: number;
  /**
   * Seconds a commit-at-shutdown order holds for the reboot that follows it; a later boot (after a
   * power loss) commits, syncs and boots instead of powering off. Default 120.
   */
  readonly commitWindowSeconds: number;
  /**
   * UEFI Secure Boot network boot: x64 UEFI PXE clients get shim (signed by Microsoft's UEFI CA), which
   * loads Debian's signed network GRUB, which boots the boot stage's Debian-signed kernel (README
   * "Secure Boot"). null (default): they get iPXE, which Secure Boot firmware refuses. File: true (Debian's
   * package paths) or {shim, grub}; env DESKFUSE_SECURE_BOOT=on|off.
   */
  readonly secureBoot: { readonly shim: string; readonly grub: string } | null;
}

/** Where Debian's shim-signed and grub-efi-amd64-signed packages put the signed binaries. */
export const SECURE_BOOT_DEFAULTS = {
  shim: '/usr/lib/shim/shimx64.efi.signed',
  grub: '/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed',
} as const;

/** The package root (dist/src/config → ../../..; src/config → ../..). */
const PACKAGE_ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.basename(path.resolve(here, '../..')) === 'dist' ? path.resolve(here, '../../..') : path.resolve(here, '../..');
})();

export const NETBOOT_DEFAULTS: NetbootConfig = {
  dhcp: 'off', interface: null, dhcpRange: null, tftpListen: null, publicUrl: null,
  bootDir: path.join(PACKAGE_ROOT, 'initramfs/out'), tftpRoot: null, ipv6Ra: true, autoEnrol: false,
  kernelArgs: 'console=tty0 console=ttyS0,115200 quiet', retrySeconds: 10, commitWindowSeconds: 120,
  secureBoot: null,
};

export const NBD_PORT = 10809;

export const DEFAULTS: ServerConfig = {
  dataDir: './data',
  meta: null,
  serverName: defaultServerName(),
  listen: { host: '127.0.0.1', port: 8080 },
  logLevel: 'info',
  logFormat: 'auto',
  metricsListen: null,
  bodyLimit: 256 * 1024 * 1024,
  netboot: NETBOOT_DEFAULTS,
  nbd: { listen: { host: '127.0.0.1', port: NBD_PORT }, anonymousRead: false, publicHost: null, cacheMiB: 4096, leaseSeconds: 3600, checkpointSeconds: 10, heartbeatSeconds: 10, tls: null, tlsPskFile: null, threads: null },
  enrolment: { pendingMax: 1000, perMinute: 60, pendingSeconds: 86400 },
  retention: { intervalSeconds: 3600, eventsSeconds: 30 * 86400, tokensSeconds: 7 * 86400, ...DEFAULT_RETENTION_POLICY, deltaIdleDays: 30, pruneVersions: 1 },
  gc: { intervalSeconds: 86400, graceSeconds: 86400, leaseSeconds: 60 },
  scrub: { intervalSeconds: 86400, mibPerSecond: 32 },
  packCache: { mib: 2048 },
  admission: { heavyTransfers: 16, retryAfterSeconds: 5, maxMbitPerSecond: 0 },
  tftp: { ...TFTP_DEFAULTS },
  store: { s3: null, cacheMiB: 4096, retrySeconds: 120 },
  tls: { mode: 'off', listen: { host: '127.0.0.1', port: HTTPS_PORT }, certFile: null, keyFile: null, caFile: null, names: null, plainHttp: 'boot', dir: 'data/tls' },
  signing: { headSeconds: 86400 },
};

export interface ConfigSources {
  file?: string;
  env?: Record<string, string | undefined>;
  flags?: {
    data?: string; meta?: string; serverName?: string; listen?: string; logLevel?: string; logFormat?: string; metricsListen?: string;
    dhcp?: string; interface?: string; dhcpRange?: string; tftpListen?: string; publicUrl?: string; bootDir?: string;
    autoEnrol?: string; ipv6Ra?: boolean;
    nbdListen?: string; nbdAnonymousRead?: boolean; nbdTls?: string;
    store?: string;
    tls?: string; httpsListen?: string;
  };
  /** Told about deprecated keys the file still uses (the config loads). */
  warn?: (message: string) => void;
}

/**
 * Top-level config-file keys: a flag's name in camelCase (`--log-level` → `logLevel`, `--data` → `data`);
 * the network-boot and NBD flags live in their blocks (`--dhcp` → `netboot.dhcp`, `--nbd-listen` → `nbd.listen`).
 */
export const TOP_KEYS = ['data', 'meta', 'serverName', 'listen', 'logLevel', 'logFormat', 'metricsListen', 'bodyLimit', 'netboot', 'nbd', 'enrolment', 'retention', 'gc', 'scrub', 'packCache', 'admission', 'tftp', 'tls', 'signing'];
/** Old names still read, with a warning: old → new. */
const DEPRECATED_KEYS: Record<string, string> = { dataDir: 'data' };
const LOG_FORMATS = ['auto', 'pretty', 'json'];
/** Flags whose file keys live in a block: named so when a file has them at the top. */
const IN_BLOCKS: Record<string, string> = {
  nbdListen: 'nbd.listen', nbdAnonymousRead: 'nbd.anonymousRead', nbdTls: 'nbd.tls', dhcp: 'netboot.dhcp', interface: 'netboot.interface', dhcpRange: 'netboot.dhcpRange',
  tftpListen: 'netboot.tftpListen', publicUrl: 'netboot.publicUrl', bootDir: 'netboot.bootDir', autoEnrol: 'netboot.autoEnrol', ipv6Ra: 'netboot.ipv6Ra',
  httpsListen: 'tls.listen',
};

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function parseHostPort(s: string, problems: string[], what: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s);
  if (!m) {
    problems.push(`${what}: expected HOST:PORT, got ${JSON.stringify(s)}`);
    return undefined;
  }
  const port = Number(m[3]);
  if (port < 0 || port > 65535) {
    problems.push(`${what}: port must be 0-65535, got ${port}`);
    return undefined;
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export function loadServerConfig(src: ConfigSources = {}): ServerConfig {
  const problems: string[] = [];
  let file: Record<string, unknown> = {};
  if (src.file) {
    try {
      file = JSON.parse(readFileSync(src.file, 'utf8')) as Record<string, unknown>;
    } catch (cause) {
      throw dfError('DF_ERR_CONFIG', `config file ${src.file}: ${(cause as Error).message}`, { file: src.file }, cause);
    }
    if (!file || typeof file !== 'object' || Array.isArray(file)) throw dfError('DF_ERR_CONFIG', `config file ${src.file}: expected a JSON object`, { file: src.file });
    checkKeys(null, file, [...TOP_KEYS, ...STORE_KEYS], problems, { renamed: DEPRECATED_KEYS, elsewhere: IN_BLOCKS });
    for (const [old, now] of Object.entries(DEPRECATED_KEYS)) {
      if (file[old] === undefined) continue;
      if (file[now] !== undefined) problems.push(`config file: ${JSON.stringify(old)} and ${JSON.stringify(now)} both given; keep ${JSON.stringify(now)} (${JSON.stringify(old)} is its old name)`);
      else src.warn?.(`config file ${src.file}: key ${JSON.stringify(old)} is deprecated: call it ${JSON.stringify(now)}, as the flag --${now}`);
      file[now] ??= file[old];
    }
  }
  const env = src.env ?? {};
  const pick = <T>(flag: T | undefined, envv: T | undefined, filev: T | undefined, def: T): T => flag ?? envv ?? filev ?? def;

  const dataDir = pick(src.flags?.data, env.DESKFUSE_DATA, file.data as string | undefined, DEFAULTS.dataDir);
  if (typeof dataDir !== 'string' || !dataDir) problems.push('data: expected a non-empty path');
  const meta = pick<string | null>(src.flags?.meta, env.DESKFUSE_META, file.meta as string | undefined, DEFAULTS.meta);
  if (meta !== null) checkMetaUrl(meta, problems);
  const serverName = pick<unknown>(src.flags?.serverName, env.DESKFUSE_SERVER_NAME, file.serverName, DEFAULTS.serverName);
  if (typeof serverName !== 'string' || !SERVER_NAME_RE.test(serverName)) {
    problems.push(`serverName: expected 1-63 letters, digits, '.', '_' or '-' (starting with a letter or digit), got ${JSON.stringify(serverName)}`);
  }
  const listenRaw = pick(src.flags?.listen, env.DESKFUSE_LISTEN, file.listen as string | undefined, `${DEFAULTS.listen.host}:${DEFAULTS.listen.port}`);
  const listen = typeof listenRaw === 'string' ? parseHostPort(listenRaw, problems, 'listen') : (problems.push('listen: expected HOST:PORT'), undefined);
  const logLevel = pick(src.flags?.logLevel, env.DESKFUSE_LOG_LEVEL, file.logLevel as string | undefined, DEFAULTS.logLevel);
  if (!LEVELS.includes(logLevel)) problems.push(`logLevel: expected one of ${LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  const logFormat = pick(src.flags?.logFormat, env.DESKFUSE_LOG_FORMAT, file.logFormat as string | undefined, DEFAULTS.logFormat);
  if (!LOG_FORMATS.includes(logFormat)) problems.push(`logFormat: expected one of ${LOG_FORMATS.join(', ')}, got ${JSON.stringify(logFormat)}`);
  const metricsRaw = pick<unknown>(src.flags?.metricsListen, env.DESKFUSE_METRICS_LISTEN, file.metricsListen, 'off');
  const metricsListen = metricsRaw === 'off' || metricsRaw === null ? null
    : typeof metricsRaw === 'string' ? parseHostPort(metricsRaw, problems, 'metricsListen') ?? null : (problems.push('metricsListen: expected HOST:PORT or "off"'), null);
  const bodyLimit = file.bodyLimit ?? DEFAULTS.bodyLimit;
  if (typeof bodyLimit !== 'number' || !Number.isInteger(bodyLimit) || bodyLimit < 1024 * 1024) problems.push('bodyLimit: expected an integer of at least 1048576');

  const netboot = loadNetboot((file.netboot ?? {}) as Record<string, unknown>, env, src.flags ?? {}, problems);
  const nbd = loadNbd((file.nbd ?? {}) as Record<string, unknown>, env, src.flags ?? {}, listen?.host ?? DEFAULTS.listen.host, problems);
  const enrolment = loadIntegers('enrolment', (file.enrolment ?? {}) as Record<string, unknown>, DEFAULTS.enrolment, { pendingMax: [0, 1e7], perMinute: [0, 1e6], pendingSeconds: [60, 365 * 86400] }, problems);
  const retention = loadIntegers('retention', (file.retention ?? {}) as Record<string, unknown>, DEFAULTS.retention, { intervalSeconds: [0, 7 * 86400], eventsSeconds: [3600, 10 * 365 * 86400], tokensSeconds: [0, 10 * 365 * 86400], ...POLICY_RANGES, deltaIdleDays: [0, 36_500], pruneVersions: [0, 1] }, problems);
  const gc = loadIntegers('gc', (file.gc ?? {}) as Record<string, unknown>, DEFAULTS.gc, { intervalSeconds: [0, 30 * 86400], graceSeconds: [0, 365 * 86400], leaseSeconds: [2, 3600] }, problems);
  const scrub = loadIntegers('scrub', (file.scrub ?? {}) as Record<string, unknown>, DEFAULTS.scrub, { intervalSeconds: [0, 30 * 86400], mibPerSecond: [1, 100_000] }, problems);
  const packCache = loadIntegers('packCache', (file.packCache ?? {}) as Record<string, unknown>, DEFAULTS.packCache, { mib: [0, 1 << 20] }, problems);
  const admission = loadIntegers('admission', (file.admission ?? {}) as Record<string, unknown>, DEFAULTS.admission, { heavyTransfers: [0, 100_000], retryAfterSeconds: [1, 3600], maxMbitPerSecond: [0, 1_000_000] }, problems);
  const tftp = loadIntegers('tftp', (file.tftp ?? {}) as Record<string, unknown>, DEFAULTS.tftp, { maxTransfers: [1, 10_000], maxQueued: [0, 100_000] }, problems);
  const store = loadStore(file, env, src.flags ?? {}, problems);
  const tls = loadTls((typeof file.tls === 'string' ? { mode: file.tls } : file.tls ?? {}) as Record<string, unknown>, env, src.flags ?? {}, listen ?? DEFAULTS.listen, typeof dataDir === 'string' ? dataDir : '.', parseHostPort, problems);
  const signing = loadIntegers('signing', (file.signing ?? {}) as Record<string, unknown>, DEFAULTS.signing, { headSeconds: [60, 365 * 86400] }, problems);

  if (problems.length) throw dfError('DF_ERR_CONFIG', `invalid configuration:\n  - ${problems.join('\n  - ')}`, { problems });
  return deepFreeze({ dataDir: path.resolve(dataDir), meta: meta === 'sqlite' ? null : meta, serverName: serverName as string, listen: listen!, logLevel: logLevel as ServerConfig['logLevel'], logFormat: logFormat as ServerConfig['logFormat'], metricsListen, bodyLimit: bodyLimit as number, netboot, nbd, enrolment, retention, gc, scrub, packCache, admission, tftp, store, tls, signing });
}

const SERVER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** The machine's host name, cut to what a server name may hold (`localhost` if nothing is left). */
function defaultServerName(): string {
  const n = hostname().replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 63);
  return n || 'localhost';
}

/** `postgres://…` (or `sqlite`, the default). The password never appears in a problem. */
function checkMetaUrl(v: unknown, problems: string[]): void {
  if (v === 'sqlite') return;
  if (typeof v !== 'string') { problems.push('meta: expected "sqlite" or a postgres:// URL'); return; }
  let u: URL | undefined;
  try { u = new URL(v); } catch { /* below */ }
  if (!u || !['postgres:', 'postgresql:'].includes(u.protocol) || !u.hostname) {
    problems.push(`meta: expected "sqlite" or postgres://USER:PASSWORD@HOST[:PORT]/DATABASE, got ${JSON.stringify(maskUrl(v))}`);
  }
}

/** A config-file block of integers, each in its range (the file is the only source: no env or flags). */
function loadIntegers<T extends { readonly [k in keyof T]: number }>(block: string, file: Record<string, unknown>, d: T, ranges: Record<keyof T, [number, number]>, problems: string[]): T {
  checkKeys(block, file, Object.keys(d), problems);
  const out: Record<string, number> = {};
  for (const [k, [min, max]] of Object.entries(ranges) as Array<[string, [number, number]]>) {
    const v = file[k] ?? d[k as keyof T];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      problems.push(`${block}.${k}: expected an integer ${min}-${max}, got ${JSON.stringify(v)}`);
      out[k] = d[k as keyof T];
    } else out[k] = v;
  }
  return out as T;
}

const STORE_KEYS = ['store', 'storeCacheMiB', 'storeRetrySeconds', 'storeCredentials'];

function loadStore(file: Record<string, unknown>, env: Record<string, string | undefined>, flags: NonNullable<ConfigSources['flags']>, problems: string[]): StoreConfig {
  const d = DEFAULTS.store;
  const num = (key: string, envKey: string, def: number, min: number, max: number): number => {
    const raw = env[envKey] !== undefined ? Number(env[envKey]) : (file[key] ?? def);
    if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < min || raw > max) {
      problems.push(`${key}: expected an integer ${min}-${max}, got ${JSON.stringify(env[envKey] ?? file[key])}`);
      return def;
    }
    return raw;
  };
  const cacheMiB = num('storeCacheMiB', 'DESKFUSE_STORE_CACHE_MIB', d.cacheMiB, 64, 1 << 24);
  const retrySeconds = num('storeRetrySeconds', 'DESKFUSE_STORE_RETRY_SECONDS', d.retrySeconds, 0, 3600);
  const raw = flags.store ?? env.DESKFUSE_STORE ?? file.store;
  if (raw !== undefined && raw !== null && typeof raw !== 'string') problems.push('store: expected a string (s3://BUCKET/PREFIX?endpoint=URL&region=R, or "local")');
  if (typeof raw !== 'string' || raw === '' || raw === 'local') {
    if (file.storeCredentials !== undefined) problems.push('storeCredentials: only for an s3:// store');
    return { s3: null, cacheMiB, retrySeconds };
  }
  let location: S3Location | undefined;
  try {
    location = parseS3Url(raw);
  } catch (err) {
    if (!isDeskfuseError(err, 'DF_ERR_CONFIG')) throw err;
    problems.push(err.message);
  }
  // Credentials: the environment, else the config file. Never echoed in a problem.
  const fc = file.storeCredentials;
  let fileCred: Record<string, unknown> = {};
  if (fc !== undefined) {
    if (fc && typeof fc === 'object' && !Array.isArray(fc)) {
      fileCred = fc as Record<string, unknown>;
      checkKeys('storeCredentials', fileCred, ['accessKeyId', 'secretAccessKey', 'sessionToken'], problems);
      for (const k of ['accessKeyId', 'secretAccessKey', 'sessionToken']) if (fileCred[k] !== undefined && typeof fileCred[k] !== 'string') problems.push(`storeCredentials.${k}: expected a string`);
    } else problems.push('storeCredentials: expected {accessKeyId, secretAccessKey, sessionToken?}');
  }
  const fromEnv = env.AWS_ACCESS_KEY_ID !== undefined || env.AWS_SECRET_ACCESS_KEY !== undefined;
  const str = (v: unknown) => (typeof v === 'string' && v ? v : undefined);
  const accessKeyId = str(fromEnv ? env.AWS_ACCESS_KEY_ID : fileCred.accessKeyId);
  const secretAccessKey = str(fromEnv ? env.AWS_SECRET_ACCESS_KEY : fileCred.secretAccessKey);
  const sessionToken = str(fromEnv ? env.AWS_SESSION_TOKEN : fileCred.sessionToken);
  if (!accessKeyId || !secretAccessKey) {
    problems.push(`store: an s3:// store needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the config file's storeCredentials (${fromEnv ? 'the environment has only one of the two' : 'neither is set'})`);
  }
  if (!location || !accessKeyId || !secretAccessKey) return { s3: null, cacheMiB, retrySeconds };
  return { s3: { url: raw, location, credentials: hiddenCredentials(accessKeyId, secretAccessKey, sessionToken) }, cacheMiB, retrySeconds };
}

/** Credentials whose secret parts are not enumerable: JSON, util.inspect and spreads of the config leave them out. */
function hiddenCredentials(accessKeyId: string, secretAccessKey: string, sessionToken: string | undefined): S3Credentials {
  const c = { accessKeyId } as S3Credentials;
  Object.defineProperty(c, 'secretAccessKey', { value: secretAccessKey, enumerable: false });
  if (sessionToken) Object.defineProperty(c, 'sessionToken', { value: sessionToken, enumerable: false });
  return c;
}

export const NBD_KEYS = ['listen', 'anonymousRead', 'publicHost', 'cacheMiB', 'leaseSeconds', 'checkpointSeconds', 'heartbeatSeconds', 'tls', 'tlsPskFile', 'threads'];

function loadNbd(file: Record<string, unknown>, env: Record<string, string | undefined>, flags: NonNullable<ConfigSources['flags']>, httpHost: string, problems: string[]): NbdConfig {
  checkKeys('nbd', file, NBD_KEYS, problems);
  const d = DEFAULTS.nbd;
  const raw = flags.nbdListen ?? env.DESKFUSE_NBD_LISTEN ?? (file.listen as string | undefined);
  let listen: NbdConfig['listen'] = { host: httpHost, port: NBD_PORT };
  if (raw === 'off') listen = null;
  else if (typeof raw === 'string') listen = parseHostPort(/:\d+$/.test(raw) ? raw : `${raw}:${NBD_PORT}`, problems, 'nbdListen') ?? null;
  else if (raw !== undefined) problems.push('nbd.listen: expected HOST:PORT or "off"');
  const envAnon = env.DESKFUSE_NBD_ANONYMOUS_READ;
  const anonymousRead = flags.nbdAnonymousRead ?? (envAnon !== undefined ? envAnon === '1' || envAnon === 'true' : typeof file.anonymousRead === 'boolean' ? file.anonymousRead : d.anonymousRead);
  const publicHost = env.DESKFUSE_NBD_PUBLIC_HOST ?? (typeof file.publicHost === 'string' ? file.publicHost : null);
  if (publicHost !== null && !/^[A-Za-z0-9.:[\]-]{1,253}$/.test(publicHost)) problems.push(`nbd.publicHost: not a host name or address: ${JSON.stringify(publicHost)}`);
  const num = (k: 'cacheMiB' | 'leaseSeconds' | 'checkpointSeconds' | 'heartbeatSeconds', min: number, max: number) => {
    const v = file[k] ?? d[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) { problems.push(`nbd.${k}: expected an integer ${min}-${max}`); return d[k]; }
    return v;
  };
  const tlsRaw = flags.nbdTls ?? env.DESKFUSE_NBD_TLS ?? (file.tls === null ? undefined : file.tls);
  let tls: NbdConfig['tls'] = null;
  if (tlsRaw === 'off' || tlsRaw === 'on' || tlsRaw === 'required') tls = tlsRaw;
  else if (tlsRaw !== undefined) problems.push(`nbd.tls: expected off, on or required, got ${JSON.stringify(tlsRaw)}`);
  const pskRaw = env.DESKFUSE_NBD_TLS_PSK_FILE ?? (file.tlsPskFile === null ? undefined : file.tlsPskFile);
  let tlsPskFile: string | null = null;
  if (typeof pskRaw === 'string' && pskRaw !== '') tlsPskFile = path.resolve(pskRaw);
  else if (pskRaw !== undefined) problems.push('nbd.tlsPskFile: expected a file path');
  if (tlsPskFile !== null && tls === 'off') problems.push('nbd.tlsPskFile: given, but nbd.tls is off');
  const threadsRaw = env.DESKFUSE_NBD_THREADS !== undefined && env.DESKFUSE_NBD_THREADS !== '' ? env.DESKFUSE_NBD_THREADS : file.threads ?? null;
  let threads: number | null = null;
  if (threadsRaw !== null) {
    const n = typeof threadsRaw === 'string' && /^\d{1,3}$/.test(threadsRaw) ? Number(threadsRaw) : threadsRaw;
    if (typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 64) threads = n;
    else problems.push(`nbd.threads: expected an integer 0-64 (0: no threads), got ${JSON.stringify(threadsRaw)}`);
  }
  return { listen, anonymousRead, publicHost, cacheMiB: num('cacheMiB', 16, 1 << 20), leaseSeconds: num('leaseSeconds', 60, 86400), checkpointSeconds: num('checkpointSeconds', 1, 3600), heartbeatSeconds: num('heartbeatSeconds', 1, 3600), tls, tlsPskFile, threads };
}

export const NETBOOT_KEYS = ['dhcp', 'interface', 'dhcpRange', 'tftpListen', 'publicUrl', 'bootDir', 'tftpRoot', 'ipv6Ra', 'autoEnrol', 'kernelArgs', 'retrySeconds', 'commitWindowSeconds', 'secureBoot'];

function loadNetboot(file: Record<string, unknown>, env: Record<string, string | undefined>, flags: NonNullable<ConfigSources['flags']>, problems: string[]): NetbootConfig {
  checkKeys('netboot', file, NETBOOT_KEYS, problems);
  const str = (flag: string | undefined, envKey: string, key: string): string | undefined =>
    flag ?? env[envKey] ?? (typeof file[key] === 'string' ? (file[key] as string) : file[key] === undefined || file[key] === null ? undefined : (problems.push(`netboot.${key}: expected a string`), undefined));
  const d = NETBOOT_DEFAULTS;
  const dhcp = str(flags.dhcp, 'DESKFUSE_DHCP', 'dhcp') ?? d.dhcp;
  if (!['off', 'proxy', 'full'].includes(dhcp)) problems.push(`dhcp: expected off, proxy or full, got ${JSON.stringify(dhcp)}`);
  const iface = str(flags.interface, 'DESKFUSE_INTERFACE', 'interface') ?? null;
  if (dhcp !== 'off' && !iface) problems.push(`interface: --dhcp ${dhcp} needs the boot interface (--interface IF)`);
  if (iface !== null && !/^[A-Za-z0-9_.:-]{1,15}$/.test(iface)) problems.push(`interface: not an interface name: ${JSON.stringify(iface)}`);
  const rangeRaw = str(flags.dhcpRange, 'DESKFUSE_DHCP_RANGE', 'dhcpRange');
  let dhcpRange: NetbootConfig['dhcpRange'] = null;
  if (rangeRaw !== undefined) {
    const [first, last, extra] = rangeRaw.split(',').map((x) => x.trim());
    if (!first || !last || extra !== undefined || !isIPv4(first) || !isIPv4(last)) problems.push(`dhcpRange: expected FIRST,LAST (IPv4), got ${JSON.stringify(rangeRaw)}`);
    else dhcpRange = { first, last };
  }
  if (dhcp === 'full' && !dhcpRange) problems.push('dhcpRange: --dhcp full needs an address pool (--dhcp-range FIRST,LAST)');
  const tftpRaw = str(flags.tftpListen, 'DESKFUSE_TFTP_LISTEN', 'tftpListen');
  const tftpListen = tftpRaw === 'off' ? null : tftpRaw !== undefined ? parseHostPort(tftpRaw, problems, 'tftpListen') ?? null : dhcp !== 'off' ? { host: '0.0.0.0', port: 69 } : null;
  const publicUrl = str(flags.publicUrl, 'DESKFUSE_PUBLIC_URL', 'publicUrl') ?? null;
  if (publicUrl !== null && !/^https?:\/\/[^/\s]+$/.test(publicUrl)) problems.push(`publicUrl: expected http://HOST[:PORT] with no path, got ${JSON.stringify(publicUrl)}`);
  const bootDir = str(flags.bootDir, 'DESKFUSE_BOOT_DIR', 'bootDir') ?? d.bootDir;
  const tftpRoot = str(undefined, 'DESKFUSE_TFTP_ROOT', 'tftpRoot') ?? null;
  const ipv6Ra = flags.ipv6Ra ?? (typeof file.ipv6Ra === 'boolean' ? file.ipv6Ra : d.ipv6Ra);
  const autoRaw = str(flags.autoEnrol, 'DESKFUSE_AUTO_ENROL', 'autoEnrol');
  // --auto-enrol: "off", "on" (enrol, no desktop) or a desktop name every new endpoint gets.
  const autoEnrol: NetbootConfig['autoEnrol'] = autoRaw === undefined || autoRaw === 'off' ? false : autoRaw === 'on' ? {} : { desktop: autoRaw };
  const kernelArgs = str(undefined, 'DESKFUSE_KERNEL_ARGS', 'kernelArgs') ?? d.kernelArgs;
  if (/[\r\n]|\$\{/.test(kernelArgs)) problems.push('kernelArgs: no line breaks or "${"');
  const retrySeconds = typeof file.retrySeconds === 'number' ? file.retrySeconds : d.retrySeconds;
  if (!Number.isInteger(retrySeconds) || retrySeconds < 1 || retrySeconds > 3600) problems.push('netboot.retrySeconds: expected an integer 1-3600');
  const windowRaw = env.DESKFUSE_COMMIT_WINDOW_SECONDS !== undefined ? Number(env.DESKFUSE_COMMIT_WINDOW_SECONDS) : file.commitWindowSeconds ?? d.commitWindowSeconds;
  const commitWindowSeconds = typeof windowRaw === 'number' ? windowRaw : NaN;
  if (!Number.isInteger(commitWindowSeconds) || commitWindowSeconds < 10 || commitWindowSeconds > 3600) {
    problems.push(`netboot.commitWindowSeconds: expected an integer 10-3600, got ${JSON.stringify(windowRaw)}`);
  }
  const secureBoot = loadSecureBoot(env.DESKFUSE_SECURE_BOOT, file.secureBoot, problems);
  return {
    dhcp: dhcp as NetbootConfig['dhcp'], interface: iface, dhcpRange, tftpListen, publicUrl, bootDir: path.resolve(bootDir),
    tftpRoot: tftpRoot === null ? null : path.resolve(tftpRoot), ipv6Ra, autoEnrol, kernelArgs, retrySeconds, commitWindowSeconds, secureBoot,
  };
}

/** netboot.secureBoot: false | true | {shim?, grub?} (paths to the signed binaries); env on|off wins. */
function loadSecureBoot(envRaw: string | undefined, raw: unknown, problems: string[]): NetbootConfig['secureBoot'] {
  if (envRaw !== undefined) {
    if (envRaw !== 'on' && envRaw !== 'off') problems.push(`DESKFUSE_SECURE_BOOT: expected on or off, got ${JSON.stringify(envRaw)}`);
    if (envRaw !== 'on') return null;
    raw = raw && typeof raw === 'object' ? raw : true;
  }
  if (raw === undefined || raw === null || raw === false) return null;
  if (raw === true) return { ...SECURE_BOOT_DEFAULTS };
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    problems.push(`netboot.secureBoot: expected true, false or {"shim": PATH, "grub": PATH}, got ${JSON.stringify(raw)}`);
    return null;
  }
  const o = raw as Record<string, unknown>;
  checkKeys('netboot.secureBoot', o, ['shim', 'grub'], problems);
  const out: { shim: string; grub: string } = { ...SECURE_BOOT_DEFAULTS };
  for (const k of ['shim', 'grub'] as const) {
    if (o[k] === undefined) continue;
    if (typeof o[k] !== 'string' || o[k] === '') problems.push(`netboot.secureBoot.${k}: expected a file path, got ${JSON.stringify(o[k])}`);
    else out[k] = path.resolve(o[k]);
  }
  return out;
}

export function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
