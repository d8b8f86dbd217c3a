/**
 * The boot stage's program: /init runs it after the network is up. It reads its orders from the
 * kernel command line (ipxe/agent.ipxe), trades the one-time boot token and a proof of the disk's
 * endpoint secret for this boot's session, syncs or commits the local disk, reports each step, and
 * hands the machine to the local OS.
 *
 * Exit codes for /init: it normally never returns (reboot, kexec, power-off). 75 = temporary
 * failure (server unreachable: /init retries), 1 = failure (/init runs `--local`).
 * `--local`: no server; hand off to the disk as it is (after failures).
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { bootParams, parseCmdline, type BootParams } from '../../src/agent/boot/cmdline.js';
import { isUefi } from '../../src/agent/boot/system.js';
import type { Report } from '../../src/agent/boot/handoff.js';
import type { BootSession } from '../../src/api/schemas.js';
import { newEndpointSecret, proveEndpoint } from '../../src/endpoint/proof.js';
import { isDeskfuseError } from '../../src/errors.js';
import { ApiClient } from '../../src/api/client.js';
import { keyIdOf } from '../../src/sign/ed25519.js';
import { parseTrustFile, TRUST_FILE_PATH } from '../../src/sign/trust.js';

// The sync machinery (native zstd and BLAKE3 addons included); the session needs it first, to read
// the disk's secret from its state area.
const machinery = () => Promise.all([
  import('../../src/agent/commands.js'), import('../../src/agent/sync.js'), import('../../src/agent/boot/system.js'), import('../../src/agent/boot/handoff.js'),
]).then(([commands, sync, system, handoff]) => ({ ...commands, ...sync, ...system, ...handoff }));
type Machinery = Awaited<ReturnType<typeof machinery>>;

const uptime = (): string => {
  try { return readFileSync('/proc/uptime', 'utf8').split(' ')[0]!; } catch { return '?'; }
};
const mark = (name: string, extra = ''): void => console.log(`@@MARK ${name} uptime=${uptime()}${extra ? ` ${extra}` : ''}`);
const say = (text: string): void => console.log(`deskfuse: ${text}`);

/**
 * The boot stage's client: the servers of `deskfuse.server=` (one URL or several, comma-separated),
 * 20 s per answer, 6 attempts; an https server must chain to the CA of `deskfuse.ca=` (its SHA-256). Both boot calls are safe to repeat: a repeated /boot/session is
 * refused (DF_ERR_BOOT_TOKEN_USED: the one-time token), never a second session; a repeated progress
 * event is only a duplicate line in the endpoint's history.
 */
const bootClient = (p: BootParams): ApiClient => new ApiClient({ server: p.server, attempts: 6, timeoutMs: 20_000, backoffMs: 500, ...(p.ca ? { tls: { caFingerprint: p.ca } } : {}) });

function reporter(client: ApiClient, p: BootParams, s: BootSession) {
  const c = client.withToken(s.token);
  return async (phase: string, detail: Record<string, unknown> = {}): Promise<void> => {
    try {
      await c.json('POST', '/boot/events', { body: { mac: p.mac, phase, detail }, idempotent: true, attempts: 3 });
    } catch (err) {
      say(`could not report ${phase}: ${(err as Error).message}`);
    }
  };
}

/**
 * The sync's progress as `syncing` events (the console's "syncing n%"): the first after 2 s (a short
 * sync, most of a boot storm's, sends none), then at most one every 2 s and only when the percentage
 * moved, one at a time, all sent before the outcome is reported. DESKFUSE_PROGRESS_MS changes the 2 s (tests).
 */
const PROGRESS_MS = Number(process.env.DESKFUSE_PROGRESS_MS ?? 2000);
function progressReporter(report: (phase: string, detail: Record<string, unknown>) => Promise<void>, everyMs = PROGRESS_MS, clock = Date.now) {
  let chain = Promise.resolve();
  let lastAt = clock();
  let lastPct = -1;
  return {
    onProgress(done: number, total: number): void {
      const percent = total > 0 ? Math.floor((done * 100) / total) : 100;
      const t = clock();
      if (done >= total || percent === lastPct || t - lastAt < everyMs) return;
      lastAt = t;
      lastPct = percent;
      chain = chain.then(() => report('syncing', { done, total, percent }));
    },
    settled: (): Promise<void> => chain,
  };
}

/**
 * This boot's session: traded once for the one-time boot token, then kept in /run (tmpfs) so that
 * /init's retry after a temporary failure (exit 75) goes on with it instead of spending the token again.
 * The request proves the secret the disk holds (signed over the boot token, the server's nonce) and
 * offers a new one; when the server answers `provision`, the new one is what the disk must hold.
 */
const SESSION_FILE = process.env.DESKFUSE_SESSION_FILE ?? '/run/deskfuse-session.json';
async function session(client: ApiClient, p: BootParams, m: Machinery, disk: string): Promise<{ s: BootSession; secret: Buffer }> {
  const key = createHash('sha256').update(p.token).digest('hex');
  try {
    const kept = JSON.parse(readFileSync(SESSION_FILE, 'utf8')) as { key: string; session: BootSession; secret: string };
    if (kept.key === key) return { s: kept.session, secret: Buffer.from(kept.secret, 'hex') };
  } catch { /* none yet */ }
  const held = await m.diskSecret(disk);
  const fresh = newEndpointSecret();
  const secureBoot = m.secureBootState();
  mark('SECUREBOOT', `secureboot=${secureBoot.enabled === null ? 'unknown' : secureBoot.enabled ? 1 : 0} lockdown=${secureBoot.lockdown ?? 'unknown'}`);
  const s = (await client.json<BootSession>('POST', '/boot/session', {
    body: {
      token: p.token, mac: p.mac, platform: isUefi() ? 'efi' : 'pcbios',
      offer: proveEndpoint(fresh, p.mac, p.token), ...(held ? { proof: proveEndpoint(held, p.mac, p.token) } : {}), secureBoot,
    },
    idempotent: true,
  })).body;
  const secret = s.provision || !held ? fresh : held;
  try {
    writeFileSync(SESSION_FILE, JSON.stringify({ key, session: s, secret: secret.toString('hex') }), { mode: 0o600 });
  } catch (err) {
    say(`cannot keep the session in ${SESSION_FILE}: ${(err as Error).message}`);
  }
  return { s, secret };
}

/**
 * The version-signing keys this boot stage brings (src/sign/trust.ts): built into the initramfs by
 * build:initramfs, or laid over it by the server's trust initrd (server/trust-initrd.ts). A disk that
 * recorded keys trusts only those; none anywhere: the server's first key is trusted on first use.
 * A trust file that is there but malformed fails the boot stage (never a silent first use).
 */
const TRUST_FILE = process.env.DESKFUSE_TRUST_FILE ?? TRUST_FILE_PATH;
function bootTrust(): Buffer[] {
  let text: string;
  try {
    text = readFileSync(TRUST_FILE, 'utf8');
  } catch {
    say(`no trust file at ${TRUST_FILE}: the disk's recorded keys, else the server's first key, are trusted`);
    return [];
  }
  const keys = parseTrustFile(text, TRUST_FILE);
  mark('TRUST', `keys=${keys.map(keyIdOf).join(',')}`);
  return keys;
}

async function handOff(m: Machinery, s: BootSession, disk: string, report: Report): Promise<never> {
  m.mustBeBootStage(`hand off (${s.handoff})`);
  // The OS is about to run on the disk: the next boot must scan it.
  // After a sync the disk holds exactly its slot: the OS's changed-block tracking starts from there.
  if (s.handoff !== 'poweroff') await m.agentHandoff(disk, s.action === 'sync');
  return m.handOff({ machine: m, report, mark, say }, s, disk);
}

async function main(argv: string[]): Promise<number> {
  mark('AGENT-START', `node=${process.version}`);
  const raw = parseCmdline(process.env.DESKFUSE_CMDLINE ?? readFileSync('/proc/cmdline', 'utf8'));
  if (argv.includes('--local')) return localOnly(await machinery(), raw['deskfuse.disk']);
  const p = bootParams(raw);
  // The session needs the disk's secret: the disk first.
  const m = await machinery();
  const { agentCommit, agentSync } = m;
  const disk = m.findDisk(p.disk);
  const client = bootClient(p);
  const { s, secret } = await session(client, p, m, disk);
  const report = reporter(client, p, s);
  mark('SESSION', `endpoint=${s.name} desktop=${s.desktop} action=${s.action} handoff=${s.handoff} disk=${disk} secret=${s.provision ? 'provision' : 'proved'}`);
  const message = s.action === 'commit-poweroff' ? `commit at shutdown (endpoint ${s.name})` : `changes found at boot (endpoint ${s.name})`;
  // The sync's client shares the server list: it starts on the server that traded the session.
  const opts = { server: client.servers, tls: client.tls, token: s.token, disk, desktop: s.desktop, holder: s.holder, reprovision: s.reprovision, assumeDirty: s.assumeDirty, message, secret, trust: bootTrust() };
  try {
    if (s.action === 'sync') {
      say(`syncing ${disk} to desktop ${s.desktop}`);
      const progress = progressReporter(report);
      const r = await agentSync({ ...opts, onProgress: progress.onProgress });
      await progress.settled();
      mark('SYNCED', `version=${r.to} chunks=${r.chunksWritten} bytes=${r.bytesFetched} seconds=${r.seconds.toFixed(2)}${r.committed ? ` committed=${r.committed}` : ''}`);
      await report('synced', { version: r.to, from: r.from, committed: r.committed, conflict: r.conflict, chunksWritten: r.chunksWritten, bytesFetched: r.bytesFetched, seconds: r.seconds });
    } else if (s.action === 'commit-poweroff') {
      say(`committing ${disk} to desktop ${s.desktop}`);
      const r = await agentCommit(opts);
      mark('COMMITTED', `version=${r.version} committed=${r.committed}${r.conflict ? ` conflict=${r.conflict.conflictRef}` : ''} seconds=${r.seconds.toFixed(2)} scan=${r.scanSeconds?.toFixed(2) ?? '-'} read=${r.bytesScanned ?? 0} tracking=${r.tracking === 'era' ? 'era' : r.tracking ? 'full' : '-'}`);
      if (r.tracking && r.tracking !== 'era') say(`changed-block tracking not used: ${r.tracking}`);
      await report('committed', { version: r.version, committed: r.committed, conflict: r.conflict?.conflictRef ?? null, localChanges: r.localChanges, bytesUploaded: r.bytesUploaded, seconds: r.seconds });
    }
  } catch (err) {
    const msg = isDeskfuseError(err) ? `${err.code}: ${err.message}` : (err as Error).message;
    // The code on its own too: the console and the tests tell a refused signature (DF_ERR_SIG_*) from a crash.
    await report('error', { action: s.action, error: msg, ...(isDeskfuseError(err) ? { code: err.code } : {}) });
    throw err;
  }
  return handOff(m, s, disk, report);
}

/** After failures: no server. Boot the disk as it is, unless a sync was cut short (then retry later). */
async function localOnly(m: Machinery, diskOverride: string | undefined): Promise<number> {
  const { agentHandoff, agentStatus, findDisk, reboot, setBootNextToDisk } = m;
  const disk = findDisk(diskOverride);
  const st = await agentStatus(disk);
  if (st.state === 'applying') {
    say(`${disk} was being synced when it stopped and cannot boot as it is; rebooting to try again`);
    return reboot();
  }
  // Only a disk with deskfuse state is marked in use; blank or unrecognised data boots as it is.
  if (st.state === 'clean' || st.state === 'dirty') await agentHandoff(disk);
  if (isUefi()) {
    try {
      const o = setBootNextToDisk(disk);
      mark('BOOTNEXT', `Boot${o.num.toString(16).toUpperCase().padStart(4, '0')}`);
    } catch (err) {
      say(`cannot set BootNext: ${(err as Error).message}`);
    }
  }
  mark('REBOOT', 'local');
  return reboot();
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  const temp = isDeskfuseError(err) && err.code === 'DF_ERR_UNREACHABLE';
  const msg = isDeskfuseError(err) ? `${err.code}: ${err.message}` : (err as Error)?.message ?? String(err);
  mark('AGENT-ERROR', JSON.stringify(msg));
  say(`${temp ? 'temporary failure' : 'failed'}: ${msg}`);
  process.exit(temp ? 75 : 1);
});
