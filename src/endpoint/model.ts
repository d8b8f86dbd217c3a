/**
 * Endpoints: the physical (VOI) machines that network-boot. An endpoint is known by its MACs; an
 * admin approves it (or the config enrols it automatically) and assigns it a desktop. The server
 * remembers what it last knew of the endpoint's disk, so a boot with nothing to do goes straight
 * to the local disk.
 */
export type EndpointState = 'pending' | 'enrolled' | 'disabled' | 'pending-reprovision';
export const ENDPOINT_STATES: readonly EndpointState[] = ['pending', 'enrolled', 'disabled', 'pending-reprovision'];

/**
 * The endpoint's disk secret as the server knows it (src/endpoint/proof.ts): `none` (never provisioned,
 * or an admin ordered a reprovision), `provisioning` (a boot offered a key; it binds when that disk
 * reports a finished sync or commit), `bound` (every boot must prove it). A boot that fails to prove a
 * bound secret puts the endpoint in state `pending-reprovision` until an admin runs `endpoint reprovision`.
 */
export type EndpointSecret = 'none' | 'provisioning' | 'bound';

/** The public keys of an endpoint's disk secret (never its secret; never leaves the server). */
export interface EndpointKeys {
  key: string | null;
  pendingKey: string | null;
}

/** What a boot does: `sync` (merge the desktop's head, then boot local), `local` (never sync). */
export type EndpointMode = 'sync' | 'local';
export const ENDPOINT_MODES: readonly EndpointMode[] = ['sync', 'local'];

/**
 * How the endpoint reaches its local disk after the boot stage, or when there is nothing to do:
 *   auto     kexec when the image declares a kernel, else sanboot (BIOS) / BootNext (UEFI)
 *   kexec    the agent kexecs the kernel the image declares (no firmware pass)
 *   sanboot  iPXE `sanboot --drive 0x80` (BIOS)
 *   exit     iPXE `exit`: the BIOS boots its next device (never on UEFI: it opens setup, see README)
 *   bootnext the agent writes UEFI BootNext for the disk and reboots
 */
export type BootMethod = 'auto' | 'kexec' | 'sanboot' | 'exit' | 'bootnext';
export const BOOT_METHODS: readonly BootMethod[] = ['auto', 'kexec', 'sanboot', 'exit', 'bootnext'];

/** What the server last knew of the disk: never synced, sealed clean at `diskVersion`, or in use by its OS. */
export type DiskKnown = 'unknown' | 'clean' | 'in-use';

export type Firmware = 'bios' | 'uefi';

export interface LastSync {
  result: 'ok' | 'error';
  action: string;
  at: string;
  version?: number;
  seconds?: number;
  error?: string;
  /** Bytes the sync fetched (or the commit uploaded). */
  bytes?: number;
  /** Seconds since the boot's DHCP request at which each phase was reached. */
  phases?: Record<string, number>;
}

export interface EndpointRow {
  id: string;
  name: string;
  macs: string[];
  uuid: string | null;
  serial: string | null;
  state: EndpointState;
  desktop: string | null;
  mode: EndpointMode;
  bootMethod: BootMethod;
  firmware: Firmware | null;
  disk: DiskKnown;
  diskVersion: number | null;
  /**
   * When the desktop's OS asked for a commit at shutdown (null: no order). The order is for the
   * reboot that follows it: a boot within the commit window commits and powers off; a later one (the
   * machine lost power instead, and someone turns it on to work) commits, syncs and boots.
   */
  commitRequested: string | null;
  lastSeen: string | null;
  lastSync: LastSync | null;
  createdAt: string;
  /** Filled in by the repository when it reads the row. */
  secret?: EndpointSecret;
}

export type BootPhase =
  | 'dhcp' | 'tftp' | 'script' | 'kernel' | 'initrd' | 'agent' | 'syncing' | 'synced' | 'committed' | 'local' | 'poweroff'
  | 'enrol' | 'error' | 'refused';
/** The order of a normal boot, for timelines. */
export const BOOT_PHASES: readonly BootPhase[] = ['dhcp', 'tftp', 'script', 'kernel', 'initrd', 'agent', 'syncing', 'synced', 'committed', 'local', 'poweroff'];

export interface BootEvent {
  seq: number;
  endpoint: string | null;
  mac: string;
  phase: BootPhase;
  at: string;
  detail: Record<string, unknown>;
}

export interface BootTokenRow {
  hash: string;
  endpoint: string;
  mac: string;
  action: BootAction;
  createdAt: string;
  expiresAt: string;
  usedAt: string | null;
}

export type BootAction = 'sync' | 'commit-poweroff' | 'local';

/** Persistence of endpoints, their boot tokens and boot events (SQLite: src/meta/sqlite-endpoints.ts). */
export interface EndpointRepo {
  insertEndpoint(row: EndpointRow): Promise<void>;
  /**
   * Write `row`; with `before` (the row as its writer read it), only the fields that differ from it, so
   * two writers of different fields (an admin's approve, the endpoint's own boot) never undo each other.
   */
  updateEndpoint(row: EndpointRow, before?: EndpointRow): Promise<void>;
  getEndpoint(id: string): Promise<EndpointRow | undefined>;
  findByMac(mac: string): Promise<EndpointRow | undefined>;
  findByName(name: string): Promise<EndpointRow | undefined>;
  listEndpoints(): Promise<EndpointRow[]>;
  addBootToken(row: BootTokenRow): Promise<void>;
  /** Mark used in one statement; returns the row as it was before (undefined: unknown hash). */
  useBootToken(hash: string, at: string): Promise<BootTokenRow | undefined>;
  addEvent(e: Omit<BootEvent, 'seq'>): Promise<BootEvent>;
  getEvent(seq: number): Promise<BootEvent | undefined>;
  /** The last `limit` events, of everything or of one endpoint (by id or any of its MACs, also before it was known). */
  listEvents(filter: { endpoint: string | null; macs: string[] } | undefined, limit: number): Promise<BootEvent[]>;
  getKeys(endpoint: string): Promise<EndpointKeys>;
  setKeys(endpoint: string, keys: EndpointKeys, at: string): Promise<void>;
  /** The address the endpoint last booted or reported from (a commit request must come from it). */
  setAddress(endpoint: string, ip: string, at: string): Promise<void>;
  getAddress(endpoint: string): Promise<{ ip: string; at: string } | undefined>;
  /** Pending endpoints seen at or after `since`. */
  countPending(since: string): Promise<number>;
  /** Housekeeping (src/endpoint/prune.ts); each returns how many rows it deleted. */
  prunePending(seenBefore: string): Promise<number>;
  pruneBootTokens(now: string): Promise<number>;
  pruneEvents(before: string): Promise<number>;
}

/** `aa:bb:cc:dd:ee:ff` from any common spelling (dashes, no separators, upper case); undefined if not a MAC. */
export function normalizeMac(s: string): string | undefined {
  const hex = s.trim().toLowerCase().replace(/[:\-.]/g, '');
  if (!/^[0-9a-f]{12}$/.test(hex)) return undefined;
  return hex.match(/../g)!.join(':');
}

/** The endpoint id made from its first MAC: `ep-aabbccddeeff`. */
export const endpointIdFor = (mac: string): string => `ep-${mac.replace(/:/g, '')}`;
