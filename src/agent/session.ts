import { hostname } from 'node:os';
import path from 'node:path';
import { ApiClient, busyLine, ServerList } from '../api/client.js';
import type { TlsPins, TlsTrust } from '../api/tls-pin.js';
import type { Desktop, Image, LeaseTaken } from '../api/schemas.js';
import { AGENT_LEASE_SECONDS } from '../desktop/desktops.js';
import { dfError } from '../errors.js';
import { blocksPerChunk, chunkCount, type Geometry } from '../image/geometry.js';
import { BLOCK_HASH_BYTES } from '../sync/blockhash.js';
import { newEndpointSecret } from '../endpoint/proof.js';
import { openDisk, type Disk } from './disk.js';
import { loadNative } from '../native/addon.js';
import { adoptLegacyState, areaStart, type DiskState, readSlot, readState, type Slot, writeHeader } from './state-area.js';

export interface Lease {
  holder: string;
  /** 0: not held (another holder has it): a commit under it is kept as a conflict. */
  fencing: number;
  /** The live lease a forced take-over displaced. */
  takenFrom?: { holder: string; fencing: number; since: string } | null;
}

export interface AgentOptions {
  /**
   * The image server: a base URL, several comma-separated (failover, src/api/client.ts), or a
   * ServerList that several sessions share (a retried sync starts where the last attempt ended).
   */
  server: string | ServerList;
  token: string;
  /** The CA an https server must chain to (src/api/tls-pin.ts); default the system's CAs. */
  tls?: TlsTrust | TlsPins;
  disk: string;
  /** Desktop name; for commit/status it defaults to the one recorded on the disk. */
  desktop?: string;
  /** Take the lease even if another holder has it (the other's later commit becomes a conflict). */
  force?: boolean;
  /** Wipe a state area that belongs to another image or desktop. */
  reprovision?: boolean;
  holder?: string;
  /**
   * Seconds the desktop's lease lasts without a renewal (default AGENT_LEASE_SECONDS). The run
   * renews it every third of that; afterwards the endpoint's OS does (POST /boot/keepalive), so a
   * dead endpoint frees its desktop within this time.
   */
  leaseSeconds?: number;
  /** A progress line on stderr: on a TTY (true), or also where it is not one ('always': --progress). */
  progress?: boolean | 'always';
  /** Called as a sync writes its chunks (the boot stage reports it to the server: the console's "syncing n%"). */
  onProgress?: (done: number, total: number) => void;
  /**
   * The OS may have run since the disk was sealed clean (the server let the endpoint boot its disk
   * straight from iPXE): treat a clean disk as dirty, so it is scanned and nothing it changed is missed.
   */
  assumeDirty?: boolean;
  /** The message of a version this run commits. */
  message?: string;
  /**
   * The endpoint secret the disk must hold when this run is done (the boot stage: the one its boot
   * session proved or provisioned). Unset: a disk keeps its secret, a fresh state gets a new one.
   */
  secret?: Buffer;
  /**
   * Version-signing keys to trust when the disk records none yet (the boot stage's trust file,
   * src/sign/trust.ts; `agent sync --trust FILE`). Empty and none on the disk: the server's first key
   * is trusted on first use. Once a sync recorded keys on the disk, those alone are trusted.
   */
  trust?: Buffer[];
  /** The oldest signed head accepted, seconds (default DEFAULT_MAX_HEAD_AGE_SECONDS, src/agent/signed.ts). */
  maxHeadAgeSeconds?: number;
  /** The clock a signed head's freshness is judged by (tests move it). */
  now?: () => Date;
}

/** An open agent run: client, desktop, image, disk and its state. */
export interface Session {
  client: ApiClient;
  desktop: Desktop;
  image: Image;
  geometry: Geometry;
  disk: Disk;
  areaStart: number;
  state: DiskState | null;
  slot: Slot | null;
  holder: string;
  leaseSeconds: number;
  /** The disk said clean but its file changed since it was sealed: it is treated as dirty. */
  unsealed: boolean;
  progress: boolean | 'always';
  message?: string;
  /** The endpoint secret a fresh state gets. */
  secret: Buffer;
}

/**
 * The agent's buffers come and go by the megabyte (packs, patch batches, scan buffers): with glibc's
 * defaults its RSS kept what it once used (a dynamic mmap threshold that climbs to the largest
 * buffer freed, an arena per thread). A fixed 128 KiB threshold returns every bigger buffer to the
 * system when it is freed, and two arenas bound the rest (native/fingerprint.c, mallocTune).
 */
let memoryTuned = false;
export function tuneAgentMemory(): void {
  if (memoryTuned) return;
  memoryTuned = true;
  try {
    loadNative().mallocTune(128 * 1024, 2);
  } catch {
    // no addon: glibc's defaults
  }
}

export async function openSession(o: AgentOptions, desktopName: string): Promise<Session> {
  tuneAgentMemory();
  const client = new ApiClient({ server: o.server, token: o.token, ...(o.tls ? { tls: o.tls } : {}), onBusy: (b) => process.stderr.write(busyLine('deskfuse agent', b)) });
  const desktop = (await client.json<Desktop>('GET', `/api/v1/desktops/${encodeURIComponent(desktopName)}`)).body;
  const image = (await client.json<Image>('GET', `/api/v1/images/${desktop.image}`)).body;
  const geometry = { virtualSize: image.virtualSize, chunkSize: image.chunkSize };
  const disk = await openDisk(o.disk, true);
  try {
    const start = areaStart(geometry, disk.size); // refuses a too-small disk before any write
    disk.view = { imageSize: geometry.virtualSize, diskSize: disk.size, sectorSize: disk.sectorSize };
    await adoptLegacyState(disk.fh, disk.size); // a disk provisioned before the GPT reserve: its state moves first
    let state = await readState(disk.fh, disk.size);
    // A reprovisioned disk keeps its endpoint secret unless the run brings the one it must hold.
    const secret = o.secret ?? state?.secret ?? newEndpointSecret();
    if (state && (state.image !== image.name || state.desktop !== desktop.name || state.geometry.virtualSize !== geometry.virtualSize
      || state.geometry.chunkSize !== geometry.chunkSize || state.areaStart !== start)) {
      if (!o.reprovision) {
        throw dfError('DF_ERR_DISK_FOREIGN', `${o.disk} holds ${state.image} for desktop ${state.desktop}, not ${image.name} for ${desktop.name}; rerun with --reprovision to overwrite it`, {
          disk: o.disk, image: state.image, desktop: state.desktop,
        });
      }
      state = null;
    }
    // A disk file written since a run sealed it clean (its mtime moved: loop-mounted, a tool, a copy)
    // is scanned like a dirty one, never trusted as clean; dirty on the disk at once, so a run that
    // stops before it reseals leaves it to the next one.
    const unsealed = state?.state === 'clean' && changedSinceSeal(state, disk);
    if (unsealed) state = await writeHeader(disk.fh, disk.size, { ...state!, state: 'dirty' });
    const slot = state ? await readSlot(disk.fh, state) : null;
    // The boot session bound a new secret: on the disk before anything else happens to it.
    if (state && !state.secret.equals(secret)) state = await writeHeader(disk.fh, disk.size, { ...state, secret });
    if (state?.state === 'clean' && o.assumeDirty) state = { ...state, state: 'dirty' };
    const holder = o.holder ?? `agent:${hostname()}:${path.resolve(o.disk)}`;
    return {
      client, desktop, image, geometry, disk, areaStart: start, state, slot, holder, secret, leaseSeconds: o.leaseSeconds ?? AGENT_LEASE_SECONDS, unsealed, progress: o.progress ?? false,
      ...(o.message ? { message: o.message } : {}),
    };
  } catch (err) {
    await disk.close();
    throw err;
  }
}

/** The disk file's mtime is not the one its clean seal stamped (state-area.ts, `sealed at`). */
export function changedSinceSeal(state: DiskState, disk: Pick<Disk, 'mtimeMs'>): boolean {
  return state.sealedAt != null && disk.mtimeMs !== null && Math.abs(disk.mtimeMs - state.sealedAt) >= 1;
}

/** A first state for a disk that has none (the slot is filled by the caller). */
export function freshState(s: Session): DiskState {
  return {
    seq: 0, areaStart: s.areaStart, geometry: s.geometry, state: 'dirty', activeSlot: 1, version: null, target: null, progress: 0,
    lastConflict: null, slotHash: Buffer.alloc(32), image: s.image.name, desktop: s.desktop.name, secret: s.secret,
  };
}

export function emptyHints(g: Geometry): Buffer {
  return Buffer.alloc(chunkCount(g) * blocksPerChunk(g) * BLOCK_HASH_BYTES);
}

export function hintsAt(hints: Buffer, g: Geometry, pos: number): Buffer {
  const l = blocksPerChunk(g) * BLOCK_HASH_BYTES;
  return hints.subarray(pos * l, (pos + 1) * l);
}

export async function takeLease(s: Session, force: boolean): Promise<Lease> {
  const r = await s.client.json<LeaseTaken>('POST', `/api/v1/desktops/${s.desktop.name}/lease`, {
    body: { holder: s.holder, ttlSeconds: s.leaseSeconds, force }, idempotent: true,
  });
  const t = r.body.takenFrom;
  return { holder: r.body.holder, fencing: r.body.fencing, takenFrom: t ? { holder: t.holder, fencing: t.fencing, since: t.since } : null };
}

/**
 * Renew the lease every third of its time while this run lasts (a sync of a large image can take
 * longer than the lease). A failed renewal is left alone: a commit under a lost lease is kept as a
 * conflict. Returns the function that stops it.
 */
export function keepLease(s: Session): () => Promise<void> {
  let inflight: Promise<unknown> = Promise.resolve();
  const renew = () => {
    inflight = s.client.json('POST', `/api/v1/desktops/${s.desktop.name}/lease`, { body: { holder: s.holder, ttlSeconds: s.leaseSeconds, force: false }, idempotent: true })
      .catch(() => {});
  };
  const t = setInterval(renew, (s.leaseSeconds * 1000) / 3);
  t.unref();
  // Stopped before a release: a renewal still on its way must not take the lease back after it.
  return async () => {
    clearInterval(t);
    await inflight;
  };
}

export async function releaseLease(s: Session, lease: Lease): Promise<void> {
  await s.client.json('DELETE', `/api/v1/desktops/${s.desktop.name}/lease?fencing=${lease.fencing}`, { idempotent: true, accept: [409] });
}
