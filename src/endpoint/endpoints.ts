import { EventEmitter } from 'node:events';
import { hashToken, newToken } from '../auth/tokens.js';
import { AGENT_LEASE_SECONDS, type Desktops } from '../desktop/desktops.js';
import { dfError, isDeskfuseError } from '../errors.js';
import { checkDesktopName } from '../image/names.js';
import { silentLogger, type Logger } from '../log.js';
import type { ImageBoot } from '../image/model.js';
import type { Meta } from '../meta/repo.js';
import type { SqlEngine } from '../meta/sql.js';
import { cleanDetail, cleanText } from './untrusted.js';
import { COMMIT_WINDOW_MS, decideBoot, firmwareOf, type BootDecision, type DesktopFacts, type Handoff } from './decide.js';
import { checkProof, type EndpointProof } from './proof.js';
import {
  BOOT_METHODS, ENDPOINT_MODES, endpointIdFor, normalizeMac,
  type BootAction, type BootEvent, type BootMethod, type BootPhase, type EndpointMode, type EndpointRepo, type EndpointRow,
} from './model.js';

/** A boot token lives long enough for a slow TCG endpoint to load its kernel and initramfs. */
export const BOOT_TOKEN_TTL_S = 15 * 60;
/** The desktop token a boot session gets: one boot's sync or commit. */
export const SESSION_TOKEN_TTL_S = 4 * 3600;
/** An endpoint's address is written again after this long even when unchanged (another server may have written another). */
const ADDRESS_NOTED_MS = 60_000;
/** How stale `lastSeen` may get before an event that changes nothing else writes it. */
const LAST_SEEN_MS = 60_000;
/** A boot's phases (lastSync.phases) come from its endpoint's last events: this many read first, then at most BOOT_PHASES_READ. */
const BOOT_PHASES_FIRST_READ = 32;
const BOOT_PHASES_READ = 200;

export interface BootRequest {
  mac: string;
  uuid?: string;
  serial?: string;
  platform?: string;
  buildarch?: string;
  ip?: string;
}

export interface BootSession {
  endpoint: string;
  name: string;
  mac: string;
  desktop: string;
  action: BootAction;
  handoff: Handoff;
  /** Desktop-scoped token for this boot's sync or commit. */
  token: string;
  /** Lease holder name the agent uses. */
  holder: string;
  imageBoot: ImageBoot | null;
  /** The desktop's disk must be rewritten from scratch (first boot of a blank or foreign disk). */
  reprovision: boolean;
  /** The OS may have run on the disk since it was sealed: scan it even if it says clean. */
  assumeDirty: boolean;
  /** This boot provisions the disk's secret: the agent writes the secret it offered into the state area. */
  provision: boolean;
}

/** What the boot stage sends for its session (POST /boot/session). */
export interface SessionRequest {
  token: string;
  mac: string;
  platform?: string;
  /** Signed with the secret the disk holds (src/endpoint/proof.ts). */
  proof?: EndpointProof;
  /** Signed with a new secret, for the server to bind if this boot provisions the disk. */
  offer?: EndpointProof;
  /** The address the request came from (recorded with a refusal). */
  ip?: string;
  /** Secure Boot as the boot stage sees it (recorded in the `agent` event). */
  secureBoot?: { enabled: boolean | null; lockdown: 'none' | 'integrity' | 'confidentiality' | null };
}

export interface EndpointsDeps {
  repo: EndpointRepo;
  /** Where boot events are published to every server's event stream (without one: this process only). */
  bus?: Pick<SqlEngine, 'notify' | 'listen'>;
  /** Largest event sent whole on the bus, bytes (PostgreSQL's NOTIFY takes < 8000); a larger one goes as its number. */
  notifyLimit?: number;
  meta: Meta;
  desktops: Desktops;
  now: () => Date;
  log?: Logger;
  /** Unknown endpoints are enrolled at once (and given this desktop, if set) instead of waiting for an admin. */
  autoEnrol?: { desktop?: string } | false;
  /** How long a commit-at-shutdown order holds for the reboot that follows it (default COMMIT_WINDOW_MS). */
  commitWindowMs?: number;
  /** How many unknown MACs become rows, how fast, and how long a pending one lasts (default: DEFAULT_ENROLMENT). */
  enrolment?: EnrolmentLimits;
}

/** The engine channel boot events travel on. */
export const EVENT_CHANNEL = 'deskfuse_boot_events';

export interface EnrolmentLimits {
  pendingMax: number;
  perMinute: number;
  pendingSeconds: number;
}

export const DEFAULT_ENROLMENT: EnrolmentLimits = { pendingMax: 1000, perMinute: 60, pendingSeconds: 86400 };

/** Who is asking for a commit at power-off: the address it asks from, and (later) a proof of its disk's secret. */
export interface CommitRequestOrigin {
  ip: string;
}

export interface EndpointChange {
  name?: string;
  desktop?: string | null;
  mode?: EndpointMode;
  bootMethod?: BootMethod;
}

/**
 * The endpoint registry and boot flow: who is asking (by MAC), what its boot should do, one-time
 * boot tokens bound to the MAC, and the boot events the server, the services and the agent report.
 * Every state change is one info log line bound to the endpoint and MAC, and one event on `events`.
 */
export class Endpoints {
  readonly events = new EventEmitter();
  private readonly log: Logger;
  private readonly enrolment: EnrolmentLimits;
  /** Token bucket of new endpoint rows: `perMinute` tokens, refilled continuously. */
  private bucket: { tokens: number; at: number } | undefined;
  /** Unknown MACs answered past the limits: decided like pending endpoints, never stored. */
  private readonly unstored = new WeakSet<EndpointRow>();
  /** The address last written per endpoint, and when (noteAddress). */
  private readonly noted = new Map<string, { ip: string; at: number }>();

  constructor(private readonly deps: EndpointsDeps) {
    this.log = (deps.log ?? silentLogger).child({ component: 'endpoints' });
    this.events.setMaxListeners(0);
    this.enrolment = deps.enrolment ?? DEFAULT_ENROLMENT;
  }

  /**
   * Boot events reach the event streams of every server: each is published on the engine's channel
   * (PostgreSQL NOTIFY; in-process on SQLite) and every server's listener emits it on `events`.
   * A payload past PostgreSQL's 8000-byte limit goes as its number and is read back from the table.
   */
  async listen(): Promise<() => Promise<void>> {
    if (!this.deps.bus) return async () => {};
    return this.deps.bus.listen(EVENT_CHANNEL, (payload) => {
      void this.received(payload).catch((err: unknown) => this.log.warn({ err }, 'a boot event from the event channel could not be read'));
    });
  }

  private async received(payload: string): Promise<void> {
    const msg = JSON.parse(payload) as BootEvent | { seq: number; ref: true };
    const ev = 'ref' in msg ? await this.deps.repo.getEvent(msg.seq) : msg;
    if (ev) this.events.emit('event', ev);
  }

  private async publish(ev: BootEvent): Promise<void> {
    if (!this.deps.bus) {
      this.events.emit('event', ev);
      return;
    }
    const text = JSON.stringify(ev);
    await this.deps.bus.notify(EVENT_CHANNEL, Buffer.byteLength(text) <= (this.deps.notifyLimit ?? 7000) ? text : JSON.stringify({ seq: ev.seq, ref: true }));
  }

  private get commitWindowMs(): number {
    return this.deps.commitWindowMs ?? COMMIT_WINDOW_MS;
  }

  private nowIso(): string {
    return this.deps.now().toISOString();
  }

  /** An endpoint by id, name or MAC. */
  async get(key: string): Promise<EndpointRow> {
    const e = await this.find(key);
    if (!e) throw dfError('DF_ERR_ENDPOINT_NOT_FOUND', `no endpoint ${JSON.stringify(key)} (give its id, name or MAC)`, { endpoint: key });
    return e;
  }

  /** By id, name or MAC. A key with a colon can only be a MAC (ids are ep-…, names take no colon): one lookup, not three. */
  private async find(key: string): Promise<EndpointRow | undefined> {
    const mac = normalizeMac(key);
    if (mac && key.includes(':')) return this.deps.repo.findByMac(mac);
    return await this.deps.repo.getEndpoint(key) ?? await this.deps.repo.findByName(key) ?? (mac ? await this.deps.repo.findByMac(mac) : undefined);
  }

  async list(): Promise<EndpointRow[]> {
    return await this.deps.repo.listEndpoints();
  }

  /** Recent events of everything, or of one endpoint (id, name or MAC; a MAC not enrolled yet too). */
  async recentEvents(key: string | undefined, limit = 50): Promise<BootEvent[]> {
    return await this.deps.repo.listEvents(key === undefined ? undefined : await this.eventFilter(key), limit);
  }

  /** Which events belong to `key`: the endpoint's id and MACs, or just the MAC of a machine not seen yet. */
  async eventFilter(key: string): Promise<{ endpoint: string | null; macs: string[] }> {
    const mac = normalizeMac(key);
    const e = await this.find(key);
    if (e) return { endpoint: e.id, macs: e.macs };
    if (mac) return { endpoint: null, macs: [mac] };
    throw dfError('DF_ERR_ENDPOINT_NOT_FOUND', `no endpoint ${JSON.stringify(key)} (give its id, name or MAC)`, { endpoint: key });
  }

  /** A boot request from a known or new MAC: records it (a new MAC becomes a pending endpoint, or an enrolled one by config). */
  async seen(reqRaw: BootRequest): Promise<EndpointRow> {
    const req = { ...reqRaw, uuid: reqRaw.uuid && cleanText(reqRaw.uuid, 64), serial: reqRaw.serial && cleanText(reqRaw.serial, 128) };
    const mac = normalizeMac(req.mac);
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(req.mac)}`, { field: 'mac' });
    const now = this.nowIso();
    const known = await this.deps.repo.findByMac(mac);
    const firmware = firmwareOf(req.platform);
    if (known) {
      const e: EndpointRow = { ...known, lastSeen: now, firmware, uuid: req.uuid || known.uuid, serial: req.serial || known.serial };
      await this.deps.repo.updateEndpoint(e, known);
      if (req.ip) await this.noteAddress(e, req.ip);
      return e;
    }
    const auto = this.deps.autoEnrol;
    const e: EndpointRow = {
      id: endpointIdFor(mac), name: endpointIdFor(mac), macs: [mac], uuid: req.uuid || null, serial: req.serial || null,
      state: auto ? 'enrolled' : 'pending', desktop: (auto && auto.desktop) || null, mode: 'sync', bootMethod: 'auto', firmware,
      disk: 'unknown', diskVersion: null, commitRequested: null, lastSeen: now, lastSync: null, createdAt: now,
    };
    const refused = await this.enrolRefused(e.state);
    if (refused) {
      // Anyone on the boot network can ask with made-up MACs: past the limits they get the pending
      // answer (wait, ask again) and leave no row and no event behind.
      const waiting: EndpointRow = { ...e, state: 'pending', desktop: null };
      this.unstored.add(waiting);
      this.log.debug({ mac, refused }, 'unknown endpoint not stored');
      return waiting;
    }
    await this.deps.repo.insertEndpoint(e);
    if (req.ip) await this.noteAddress(e, req.ip);
    await this.record('enrol', mac, { state: e.state, ...(e.desktop ? { desktop: e.desktop } : {}), ...(req.ip ? { ip: req.ip } : {}) }, e);
    this.log.info({ endpoint: e.id, mac, state: e.state }, auto ? 'new endpoint enrolled automatically' : 'new endpoint waits for approval');
    return e;
  }

  /** Why a new MAC gets no row: too many pending rows, or too many new rows this minute; undefined = store it. */
  private async enrolRefused(state: EndpointRow['state']): Promise<'pending-cap' | 'rate' | undefined> {
    const { pendingMax, perMinute, pendingSeconds } = this.enrolment;
    const now = this.deps.now().getTime();
    if (state === 'pending' && await this.deps.repo.countPending(new Date(now - pendingSeconds * 1000).toISOString()) >= pendingMax) return 'pending-cap';
    const b = this.bucket ?? { tokens: perMinute, at: now };
    b.tokens = Math.min(perMinute, b.tokens + ((now - b.at) / 60_000) * perMinute);
    b.at = now;
    this.bucket = b;
    if (b.tokens < 1) return 'rate';
    b.tokens -= 1;
    return undefined;
  }

  /** The address an endpoint boots or reports from: the one a commit request must come from. */
  async noteAddress(e: EndpointRow, ip: string): Promise<void> {
    if (this.unstored.has(e)) return;
    // A boot reports from one address five times in a minute: one write, not five.
    const addr = plainIp(ip);
    const now = this.deps.now().getTime();
    const noted = this.noted.get(e.id);
    if (noted && noted.ip === addr && now - noted.at < ADDRESS_NOTED_MS) return;
    await this.deps.repo.setAddress(e.id, addr, new Date(now).toISOString());
    if (this.noted.size >= 10_000) this.noted.clear();
    this.noted.set(e.id, { ip: addr, at: now });
  }

  /** What this boot does. Never issues a token to a pending, disabled or unassigned endpoint. */
  async decide(e: EndpointRow, platform: string | undefined): Promise<BootDecision> {
    return decideBoot(e, firmwareOf(platform), e.desktop ? await this.facts(e.desktop) : undefined, this.deps.now(), this.commitWindowMs);
  }

  private async facts(desktop: string): Promise<DesktopFacts | undefined> {
    try {
      const v = await this.deps.desktops.view(desktop);
      return { head: v.head, mode: v.mode, kexec: Boolean((await this.deps.meta.images.getImage(v.image))?.boot) };
    } catch (err) {
      // a desktop (or its image or line) that is gone: no facts; a database that does not answer is not that
      if (!isDeskfuseError(err) || err.code.startsWith('DF_ERR_META')) throw err;
      return undefined;
    }
  }

  /** A one-time token bound to the MAC, for the kernel command line of this boot. */
  async issueBootToken(e: EndpointRow, mac: string, action: BootAction): Promise<string> {
    if (e.state !== 'enrolled' || !e.desktop) throw dfError('DF_ERR_ENDPOINT_STATE', `endpoint ${e.name} is ${e.state}${e.desktop ? '' : ' with no desktop'}`, { endpoint: e.id });
    const token = newToken('dfb');
    const now = this.deps.now();
    await this.deps.repo.addBootToken({
      hash: hashToken(token), endpoint: e.id, mac, action, createdAt: now.toISOString(),
      expiresAt: new Date(now.getTime() + BOOT_TOKEN_TTL_S * 1000).toISOString(), usedAt: null,
    });
    return token;
  }

  /**
   * The boot stage trades its one-time boot token for a desktop token: only once, only from the
   * MAC it was issued to, only while the endpoint is still enrolled with a desktop, and only with a
   * proof of its disk's secret, signed over this boot token (the server's nonce). An endpoint with no
   * bound secret provisions one: the key the boot offers binds once that disk reports a finished
   * sync or commit. A boot that cannot prove the bound secret (a blank or replaced disk, or someone
   * else with the MAC) gets nothing, and the endpoint waits for an admin's `endpoint reprovision`.
   */
  async openSession(req: SessionRequest): Promise<BootSession> {
    const { token: bootToken, platform } = req;
    const mac = normalizeMac(req.mac);
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(req.mac)}`, { field: 'mac' });
    const now = this.nowIso();
    const t = await this.deps.repo.useBootToken(hashToken(bootToken), now);
    if (!t) throw dfError('DF_ERR_UNAUTHORIZED', 'the boot token is not valid');
    if (t.usedAt !== null) throw dfError('DF_ERR_BOOT_TOKEN_USED', `the boot token was already used at ${t.usedAt}; reboot the endpoint for a new one`, { usedAt: t.usedAt, mac });
    if (t.mac !== mac) throw dfError('DF_ERR_BOOT_TOKEN_MAC', `the boot token was issued to ${t.mac}, not ${mac}`, { issuedTo: t.mac, mac });
    if (t.expiresAt <= now) throw dfError('DF_ERR_TOKEN_EXPIRED', `the boot token expired at ${t.expiresAt}`, { expiresAt: t.expiresAt });
    const e = await this.get(t.endpoint);
    if (e.state !== 'enrolled' || !e.desktop) throw dfError('DF_ERR_ENDPOINT_STATE', `endpoint ${e.name} is ${e.state}${e.desktop ? '' : ' with no desktop'}`, { endpoint: e.id });
    const facts = await this.facts(e.desktop);
    if (!facts) throw dfError('DF_ERR_DESKTOP_NOT_FOUND', `the endpoint's desktop ${e.desktop} does not exist`, { desktop: e.desktop });
    const provision = await this.checkDisk(e, mac, bootToken, req);
    const d = decideBoot(e, firmwareOf(platform ?? (e.firmware === 'uefi' ? 'efi' : 'pcbios')), facts, this.deps.now(), this.commitWindowMs);
    // The token's action is what this boot does: a commit-at-shutdown powers off even when its window
    // closed while the machine came back (a slow boot path: a decision now would say sync and boot).
    const handoff = t.action === 'commit-poweroff' ? 'poweroff' : d.kind === 'agent' ? d.handoff : e.firmware === 'uefi' ? 'bootnext' : 'reboot';
    const view = await this.deps.desktops.view(e.desktop);
    const dt = await this.deps.desktops.mintToken(e.desktop, SESSION_TOKEN_TTL_S);
    await this.record('agent', mac, { action: t.action, handoff, ...(provision ? { provision } : {}), ...(req.secureBoot ? { secureBoot: req.secureBoot } : {}) }, e);
    return {
      endpoint: e.id, name: e.name, mac, desktop: e.desktop, action: t.action, handoff, token: dt.token, holder: `endpoint:${e.name}`,
      imageBoot: (await this.deps.meta.images.getImage(view.image))?.boot ?? null, reprovision: e.disk === 'unknown', assumeDirty: e.disk !== 'clean', provision,
    };
  }

  /** Does this boot prove the endpoint's disk secret (false), or provision one (true)? Refuses otherwise. */
  private async checkDisk(e: EndpointRow, mac: string, bootToken: string, req: SessionRequest): Promise<boolean> {
    const keys = await this.deps.repo.getKeys(e.id);
    if (!keys.key) {
      // Nothing bound yet (first provisioning, or an admin's reprovision): the boot's new key is
      // taken, replacing one an unfinished provisioning offered.
      const offer = req.offer;
      if (!offer || !checkProof(offer, mac, bootToken)) {
        throw dfError('DF_ERR_ENDPOINT_SECRET', `endpoint ${e.name} provisions its disk's secret at this boot, and the boot offered no valid key`, { endpoint: e.id });
      }
      await this.deps.repo.setKeys(e.id, { key: null, pendingKey: offer.key }, this.nowIso());
      return true;
    }
    const p = req.proof;
    const why = !p ? 'the boot brought no proof of the disk secret (a blank or replaced disk?)'
      : p.key !== keys.key ? 'the disk holds another secret than the one this endpoint was provisioned with'
      : !checkProof(p, mac, bootToken) ? 'the proof of the disk secret does not verify' : undefined;
    if (why === undefined) return false;
    const next: EndpointRow = { ...e, state: 'pending-reprovision' };
    await this.deps.repo.updateEndpoint(next, e);
    await this.record('refused', mac, { reason: why, ...(req.ip ? { ip: req.ip } : {}) }, next);
    throw dfError('DF_ERR_ENDPOINT_SECRET', `endpoint ${e.name}: ${why}; it gets nothing until an admin runs \`deskfuse endpoint reprovision ${e.name}\``, { endpoint: e.id });
  }

  /**
   * A boot event from the server's services or the agent; the agent's outcome events move what the
   * server knows of the disk (clean at a version, or in use by its OS).
   */
  async record(phase: BootPhase, macRaw: string, detailRaw: Record<string, unknown> = {}, known?: EndpointRow): Promise<BootEvent> {
    const mac = normalizeMac(macRaw) ?? cleanText(macRaw, 64);
    const detail = cleanDetail(detailRaw); // what endpoints report is untrusted text (it reaches iPXE scripts)
    const at = this.nowIso();
    if (known && this.unstored.has(known)) return { seq: 0, endpoint: null, mac, phase, at, detail };
    const e = known ?? await this.deps.repo.findByMac(mac);
    if (e) {
      const next = { ...e, lastSeen: at };
      const version = typeof detail.version === 'number' ? detail.version : undefined;
      // A boot reports half a dozen events within seconds: `lastSeen` alone is written at most once a
      // minute (the event itself is always stored).
      let skip = e.lastSeen !== null && Math.abs(Date.parse(at) - Date.parse(e.lastSeen)) < LAST_SEEN_MS; // abs: a clock set back still writes
      if ((phase === 'synced' || phase === 'committed') && version !== undefined) {
        skip = false;
        next.disk = 'clean';
        next.diskVersion = version;
        next.lastSync = {
          result: 'ok', action: phase === 'committed' ? 'commit' : 'sync', at, version,
          ...(typeof detail.seconds === 'number' ? { seconds: detail.seconds } : {}),
          ...(typeof detail.bytesFetched === 'number' ? { bytes: detail.bytesFetched } : typeof detail.bytesUploaded === 'number' ? { bytes: detail.bytesUploaded } : {}),
          phases: await this.bootPhases(e, at, phase),
        };
        next.commitRequested = null; // a commit (alone, or before a sync) carried out the order
        await this.bindPendingKey(e);
      }
      if (phase === 'local' && e.disk !== 'in-use') {
        next.disk = 'in-use';
        skip = false;
      }
      // A recovered error (a kexec that failed before BootNext took over) is logged, not a failed sync.
      if (phase === 'error' && detail.recovered !== true) {
        next.lastSync = { result: 'error', action: String(detail.action ?? 'sync'), at, error: String(detail.error ?? 'unknown error') };
        skip = false;
      }
      if (!skip) await this.deps.repo.updateEndpoint(next, e);
    }
    const ev = await this.deps.repo.addEvent({ endpoint: e?.id ?? null, mac, phase, at, detail });
    (phase === 'error' ? this.log.warn : this.log.info).call(this.log, { endpoint: e?.id, mac, phase, ...detail }, `boot: ${phase}`);
    await this.publish(ev);
    return ev;
  }

  /** The disk that was offered a secret reports a finished sync or commit: that secret is now bound. */
  private async bindPendingKey(e: EndpointRow): Promise<void> {
    const k = await this.deps.repo.getKeys(e.id);
    if (!k.pendingKey) return;
    await this.deps.repo.setKeys(e.id, { key: k.pendingKey, pendingKey: null }, this.nowIso());
    this.log.info({ endpoint: e.id }, "endpoint's disk secret bound");
  }

  /**
   * This boot's phases, in seconds since its first DHCP request: from the events since the iPXE
   * script that sent it to the boot stage (and the DHCP exchange just before that script).
   */
  private async bootPhases(e: EndpointRow, at: string, last: BootPhase): Promise<Record<string, number>> {
    // The boot's own events are the last few (a provisioning's progress events: a few dozen): read
    // those first, and further back only when the boot's start is not among them.
    let evs: BootEvent[] = [];
    let script = -1;
    let start = -1;
    for (const limit of [BOOT_PHASES_FIRST_READ, BOOT_PHASES_READ]) {
      evs = await this.deps.repo.listEvents({ endpoint: e.id, macs: e.macs }, limit);
      script = evs.length - 1;
      while (script >= 0 && !(evs[script]!.phase === 'script' && evs[script]!.detail.decision === 'agent')) script--;
      start = script;
      while (start > 0 && evs[start - 1]!.phase === 'dhcp') start--;
      // found, and not cut short by the read's limit (a longer one might see more of it), or all there is
      if ((script >= 0 && start > 0) || evs.length < limit) break;
    }
    if (script < 0) return {};
    const t0 = Date.parse(evs[start]!.at);
    const out: Record<string, number> = {};
    for (const x of evs.slice(start)) if (out[x.phase] === undefined) out[x.phase] = (Date.parse(x.at) - t0) / 1000;
    out[last] = (Date.parse(at) - t0) / 1000;
    return out;
  }

  /**
   * The desktop's OS is shutting down: should it reboot into a commit? Anyone can ask (no token: the
   * OS has none), so only the endpoint itself is heard: the request must come from the address the
   * endpoint last booted or reported from (and, once endpoints hold a disk secret, may prove it instead).
   */
  async requestCommit(macRaw: string, from: CommitRequestOrigin): Promise<{ action: 'commit-poweroff' | 'none'; reason: string }> {
    const mac = normalizeMac(macRaw);
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(macRaw)}`, { field: 'mac' });
    const e = await this.deps.repo.findByMac(mac);
    if (e) await this.checkCommitOrigin(e, from);
    if (!e || e.state !== 'enrolled' || !e.desktop || e.mode !== 'sync') return { action: 'none', reason: 'not an enrolled, syncing endpoint' };
    const facts = await this.facts(e.desktop);
    if (!facts || facts.mode !== 'persistent') return { action: 'none', reason: 'a restore desktop keeps no changes' };
    const next = { ...e, commitRequested: this.nowIso() };
    await this.deps.repo.updateEndpoint(next, e);
    await this.record('poweroff', mac, { commitRequested: true }, next);
    return { action: 'commit-poweroff', reason: 'the next boot commits the disk and powers off' };
  }

  /**
   * The desktop OS says its endpoint is alive (initramfs/os-integration, every minute): renew the
   * lease its boot's agent left on the desktop (holder `endpoint:NAME`), for `ttlSeconds`. Heard only
   * from the endpoint's last-known address. A lease someone else holds, or none, is left alone.
   */
  async keepalive(macRaw: string, from: CommitRequestOrigin, ttlSeconds = AGENT_LEASE_SECONDS): Promise<{ renewed: boolean; desktop: string | null; expiresAt: string | null; reason: string }> {
    const mac = normalizeMac(macRaw);
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(macRaw)}`, { field: 'mac' });
    const e = await this.deps.repo.findByMac(mac);
    if (!e || !e.desktop) return { renewed: false, desktop: null, expiresAt: null, reason: 'not an endpoint with a desktop' };
    await this.checkCommitOrigin(e, from);
    const holder = `endpoint:${e.name}`;
    const lease = (await this.deps.desktops.view(e.desktop)).lease;
    if (lease?.holder !== holder) return { renewed: false, desktop: e.desktop, expiresAt: null, reason: lease ? `the lease is held by ${lease.holder}` : 'the endpoint holds no lease' };
    try {
      const l = await this.deps.desktops.acquireLease(e.desktop, holder, ttlSeconds);
      return { renewed: true, desktop: e.desktop, expiresAt: l.expiresAt, reason: 'lease renewed' };
    } catch (err) {
      if (isDeskfuseError(err, 'DF_ERR_LEASE_HELD')) return { renewed: false, desktop: e.desktop, expiresAt: null, reason: `the lease is held by ${String(err.fields.holder)}` };
      throw err;
    }
  }

  /** A commit request for `e` is heard only from the endpoint: its last-known address (a secret check goes here too). */
  private async checkCommitOrigin(e: EndpointRow, from: CommitRequestOrigin): Promise<void> {
    const known = await this.deps.repo.getAddress(e.id);
    const ip = plainIp(from.ip);
    if (known?.ip === ip) return;
    this.log.warn({ endpoint: e.id, ip, known: known?.ip ?? null }, 'commit request refused: not from the endpoint');
    throw dfError('DF_ERR_FORBIDDEN', `endpoint ${e.name} last booted from ${known ? 'another address' : 'no known address'}; a commit request is accepted only from the endpoint itself`, {
      endpoint: e.id, ip,
    });
  }

  /** Register a machine before it first boots (e.g. from an inventory list): enrolled at once. */
  async add(macRaw: string, change: EndpointChange = {}, author = 'admin'): Promise<EndpointRow> {
    const mac = normalizeMac(macRaw);
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(macRaw)}`, { field: 'mac' });
    const known = await this.deps.repo.findByMac(mac);
    if (known) throw dfError('DF_ERR_ENDPOINT_STATE', `${mac} is already endpoint ${known.name}`, { endpoint: known.id });
    const now = this.nowIso();
    const e: EndpointRow = {
      id: endpointIdFor(mac), name: endpointIdFor(mac), macs: [mac], uuid: null, serial: null, state: 'pending', desktop: null, mode: 'sync',
      bootMethod: 'auto', firmware: null, disk: 'unknown', diskVersion: null, commitRequested: null, lastSeen: null, lastSync: null, createdAt: now,
    };
    await this.apply(e, change, author, 'checked'); // validates before anything is written
    await this.deps.repo.insertEndpoint(e);
    return await this.apply(e, { ...change, state: 'enrolled' }, author, 'added');
  }

  async approve(key: string, change: EndpointChange = {}, author = 'admin'): Promise<EndpointRow> {
    const e = await this.get(key);
    if (e.state === 'pending-reprovision') {
      throw dfError('DF_ERR_ENDPOINT_STATE', `endpoint ${e.name} failed to prove its disk's secret: run \`deskfuse endpoint reprovision ${e.name}\` to let its next boot provision a new one`, { endpoint: e.id });
    }
    return await this.apply(e, { ...change, state: 'enrolled' }, author, 'approved');
  }

  async assign(key: string, change: EndpointChange, author = 'admin'): Promise<EndpointRow> {
    return await this.apply(await this.get(key), change, author, 'changed');
  }

  async disable(key: string, author = 'admin'): Promise<EndpointRow> {
    return await this.apply(await this.get(key), { state: 'disabled' }, author, 'disabled');
  }

  /**
   * The admin lets the endpoint's next boot provision its disk again, with a new secret (its disk
   * was replaced or lost its state area). Until that boot binds it, any boot with the MAC may.
   */
  async reprovision(key: string, author = 'admin'): Promise<EndpointRow> {
    const e = await this.get(key);
    if (e.state === 'pending') throw dfError('DF_ERR_ENDPOINT_STATE', `endpoint ${e.name} is not approved yet: \`deskfuse endpoint approve ${e.name}\``, { endpoint: e.id });
    await this.deps.repo.setKeys(e.id, { key: null, pendingKey: null }, this.nowIso());
    const next: EndpointRow = {
      ...e, state: e.state === 'pending-reprovision' ? 'enrolled' : e.state, disk: 'unknown', diskVersion: null, commitRequested: null, secret: 'none',
    };
    await this.deps.repo.updateEndpoint(next, e);
    this.log.info({ endpoint: e.id, author, state: next.state }, 'endpoint reprovision ordered');
    this.events.emit('changed', next);
    return next;
  }

  private async apply(e: EndpointRow, c: EndpointChange & { state?: EndpointRow['state'] }, author: string, what: 'checked' | 'added' | 'approved' | 'changed' | 'disabled'): Promise<EndpointRow> {
    if (c.mode !== undefined && !ENDPOINT_MODES.includes(c.mode)) throw dfError('DF_ERR_BAD_REQUEST', `mode: expected one of ${ENDPOINT_MODES.join(', ')}`, { field: 'mode' });
    if (c.bootMethod !== undefined && !BOOT_METHODS.includes(c.bootMethod)) throw dfError('DF_ERR_BAD_REQUEST', `bootMethod: expected one of ${BOOT_METHODS.join(', ')}`, { field: 'bootMethod' });
    if (c.desktop) {
      checkDesktopName(c.desktop);
      await this.deps.desktops.get(c.desktop); // DF_ERR_DESKTOP_NOT_FOUND
    }
    if (c.name !== undefined) {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(c.name)) throw dfError('DF_ERR_BAD_REQUEST', 'name: 1-64 letters, digits, dots, dashes or underscores', { field: 'name' });
      const other = await this.deps.repo.findByName(c.name);
      if (other && other.id !== e.id) throw dfError('DF_ERR_BAD_REQUEST', `another endpoint is named ${c.name}`, { field: 'name' });
    }
    const next: EndpointRow = {
      ...e,
      ...(c.state ? { state: c.state } : {}),
      ...(c.name !== undefined ? { name: c.name } : {}),
      ...(c.desktop !== undefined ? { desktop: c.desktop } : {}),
      ...(c.mode ? { mode: c.mode } : {}),
      ...(c.bootMethod ? { bootMethod: c.bootMethod } : {}),
    };
    // A new desktop means the disk holds another line: the next boot reprovisions it.
    if (c.desktop !== undefined && c.desktop !== e.desktop) Object.assign(next, { disk: 'unknown', diskVersion: null, commitRequested: null });
    if (what === 'checked') return next;
    await this.deps.repo.updateEndpoint(next, e);
    this.log.info({ endpoint: e.id, author, state: next.state, desktop: next.desktop, mode: next.mode, bootMethod: next.bootMethod }, `endpoint ${what}`);
    this.events.emit('changed', next); // this server's console redraws the row
    return next;
  }
}

/** `::ffff:10.0.0.5` (an IPv4 client on a dual-stack socket) → `10.0.0.5`, so both spellings match. */
function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice('::ffff:'.length) : ip;
}
