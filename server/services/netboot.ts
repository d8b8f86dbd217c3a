import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import type { NetbootConfig, TftpConfig } from '../../src/config/server.js';
import type { Endpoints } from '../../src/endpoint/endpoints.js';
import { dfError } from '../../src/errors.js';
import { GRUB_DIR, GRUB_ENTRY, GRUB_STAGE } from '../../src/grub/render.js';
import type { GeneratedFile } from '../../src/tftp/server.js';
import type { Logger } from '../../src/log.js';
import type { Meta } from '../../src/meta/repo.js';
import type { Metrics } from '../../src/metrics.js';

/** Where Debian's `ipxe` package puts its binaries (scripts/setup-deps.sh installs it). */
export const IPXE_DIRS = ['/usr/lib/ipxe', '/usr/share/ipxe'];
const IPXE_FILES = ['undionly.kpxe', 'undionly.kkpxe', 'snponly.efi', 'ipxe.efi', 'ipxe.pxe', 'snponly-arm64.efi', 'ipxe-arm64.efi'];

/**
 * The Secure Boot chain's names in the TFTP root: shim is what DHCP offers; shim loads `grubx64.efi`
 * from its own directory (its DEFAULT_LOADER), here Debian's signed network GRUB.
 */
export const SECURE_BOOT_FILES = { shim: 'shimx64.efi', grub: 'grubx64.efi' } as const;

/**
 * What GRUB asks our TFTP for (src/grub/render.ts): its prefix's grub.cfg (wherever its embedded
 * prefix points: any name ending in grub.cfg), the per-endpoint config, and the boot stage's files.
 */
export function grubFiles(bootDir: string, config: (mac: string, ip: string) => Promise<string>, trust: () => Buffer) {
  const perMac = new RegExp(`^${GRUB_DIR}/([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})\\.cfg$`);
  return async (file: string, ip: string): Promise<GeneratedFile | null> => {
    if (file === GRUB_STAGE.kernel) return { path: path.join(bootDir, 'vmlinuz') };
    if (file === GRUB_STAGE.initrd) return { path: path.join(bootDir, 'initrd.img') };
    if (file === GRUB_STAGE.trust) return { bytes: trust() };
    const m = perMac.exec(file);
    if (m) return { bytes: Buffer.from(await config(m[1]!, ip)) };
    if (file === 'grub.cfg' || file.endsWith('/grub.cfg')) return { bytes: Buffer.from(GRUB_ENTRY) };
    return null;
  };
}

export interface NetbootServices {
  /** The URL endpoints reach the HTTP server by. */
  publicUrl: string | null;
  close(): Promise<void>;
}

/**
 * The IPv4 address and netmask of an interface (the boot LAN's server address). Asks iproute2:
 * os.networkInterfaces() leaves out interfaces without carrier, such as a bridge before its first port is up.
 */
export function interfaceIPv4(name: string): { address: string; netmask: string } {
  let out: string;
  try {
    out = execFileSync('ip', ['-4', '-o', 'addr', 'show', 'dev', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (cause) {
    throw dfError('DF_ERR_CONFIG', `interface ${name} does not exist (ip: ${String((cause as { stderr?: string }).stderr ?? cause).trim()})`, { interface: name }, cause);
  }
  const m = /inet (\d+\.\d+\.\d+\.\d+)\/(\d+)/.exec(out);
  if (!m) throw dfError('DF_ERR_CONFIG', `interface ${name} has no IPv4 address`, { interface: name });
  const bits = Number(m[2]);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return { address: m[1]!, netmask: [24, 16, 8, 0].map((s) => (mask >>> s) & 255).join('.') };
}

/**
 * The TFTP root: copies (not symlinks: the TFTP server refuses links out of its root) of the iPXE
 * binaries, refreshed when the package's files change. Returns the names present.
 */
export function prepareTftpRoot(root: string, log: Logger, secureBoot: NetbootConfig['secureBoot'] = null): Set<string> {
  mkdirSync(root, { recursive: true });
  const copies: Array<[string, string]> = [];
  for (const f of IPXE_FILES) {
    const src = IPXE_DIRS.map((d) => path.join(d, f)).find((p) => existsSync(p));
    if (src) copies.push([src, f]);
  }
  if (secureBoot) {
    for (const [what, src] of [['shim', secureBoot.shim], ['grub', secureBoot.grub]] as const) {
      if (!existsSync(src)) {
        throw dfError('DF_ERR_CONFIG', `netboot.secureBoot.${what}: ${src} is missing (bash scripts/secureboot-files.sh fetches Debian's signed binaries; or apt-get download ${what === 'shim' ? 'shim-signed' : 'grub-efi-amd64-signed'} and dpkg -x it)`, { file: src });
      }
    }
    copies.push([secureBoot.shim, SECURE_BOOT_FILES.shim], [secureBoot.grub, SECURE_BOOT_FILES.grub]);
  }
  for (const [src, f] of copies) {
    const dst = path.join(root, f);
    const s = statSync(src);
    const d = existsSync(dst) ? statSync(dst) : undefined;
    if (!d || d.size !== s.size || d.mtimeMs < s.mtimeMs) {
      copyFileSync(src, `${dst}.tmp`);
      renameSync(`${dst}.tmp`, dst);
    }
  }
  const have = new Set(readdirSync(root).filter((f) => IPXE_FILES.includes(f)));
  if (secureBoot) for (const f of Object.values(SECURE_BOOT_FILES)) have.add(f);
  if (have.size === 0) log.warn({ root, looked: IPXE_DIRS }, 'no iPXE binaries found: install Debian\'s ipxe package (npm start does it as root; else: sudo apt-get install -y ipxe)');
  return have;
}

/**
 * DHCP/proxyDHCP, TFTP and the IPv6 RA responder on the boot interface, as the config says. Their
 * events feed the endpoints' boot timeline (dhcp, tftp). Full DHCP keeps its pool in `meta` (shared by
 * every server on that database); a lease file of an older release is imported into it once.
 */
export async function startNetboot(
  nb: NetbootConfig, httpPort: number, dataDir: string, endpoints: Endpoints, meta: Meta, log: Logger,
  more: { tftp?: TftpConfig; metrics?: Metrics; grubConfig?: (q: { mac: string; ip: string; base: string }) => Promise<string>; trustInitrd?: () => Buffer } = {},
): Promise<NetbootServices> {
  const closers: Array<() => Promise<void>> = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((err) => log.error({ err }, 'closing a netboot service failed'));
  };
  try {
    const ifAddr = nb.interface ? interfaceIPv4(nb.interface) : null;
    const serverIp = ifAddr?.address ?? null;
    const publicUrl = nb.publicUrl ?? (serverIp ? `http://${serverIp}:${httpPort}` : null);
    // TFTP learns only the client's IP: the DHCP answers tell which MAC that is.
    const macByIp = new Map<string, string>();
    const tftpRoot = nb.tftpRoot ?? path.join(dataDir, 'tftp');
    const available = nb.tftpListen || nb.dhcp !== 'off' ? prepareTftpRoot(tftpRoot, log, nb.secureBoot) : new Set<string>();
    const grubConfig = more.grubConfig;
    // GRUB's per-boot config names the server for the boot stage: without a public URL there is none to give.
    if (nb.secureBoot && nb.tftpListen && !publicUrl) throw dfError('DF_ERR_CONFIG', 'netboot.secureBoot needs the server\'s public URL for the boot stage: set --public-url or --interface');
    const trust = more.trustInitrd;
    const generated = nb.secureBoot && grubConfig && trust && publicUrl ? grubFiles(nb.bootDir, (mac, ip) => grubConfig({ mac, ip, base: publicUrl }), trust) : undefined;
    if (nb.tftpListen) {
      const { startTftp } = await import('../../src/tftp/server.js');
      const root = tftpRoot;
      const host = nb.tftpListen.host === '0.0.0.0' && serverIp ? serverIp : nb.tftpListen.host;
      const t = await startTftp({
        host, port: nb.tftpListen.port, root, log: log.child({ svc: 'tftp' }), ...more.tftp, ...(generated ? { generated } : {}),
        onEvent: (e) => {
          const mac = macByIp.get(e.ip);
          if (!mac || e.kind === 'start') return;
          // PXE firmware first asks for the size only and aborts (ERROR 8, RFC 2347 §4): not a failure.
          const probe = e.kind === 'error' && /ERROR 8\b/.test(e.error ?? '');
          endpoints.record('tftp', mac, { file: e.file, kind: probe ? 'size-probe' : e.kind, bytes: e.bytes, ms: e.ms, ...(e.error && !probe ? { error: e.error } : {}) })
            .catch((err: unknown) => log.warn({ err, mac }, 'recording a TFTP event failed'));
        },
      });
      closers.push(() => t.close());
      if (more.metrics) {
        const transfers = more.metrics.gauge('deskfuse_tftp_transfers', 'TFTP transfers running, and requests waiting for a slot (tftp.maxTransfers)');
        const refused = more.metrics.counterTotal('deskfuse_tftp_refused_total', 'TFTP requests answered ERROR 0 "server busy" (the line of waiting requests was full)');
        more.metrics.onCollect(() => {
          const s = t.stats();
          transfers(s.active, { state: 'running' });
          transfers(s.queued, { state: 'waiting' });
          refused(s.refused);
        });
      }
      log.info({ host, port: t.port, root, maxTransfers: more.tftp?.maxTransfers }, 'TFTP serving the iPXE binaries');
    }
    if (nb.dhcp !== 'off') {
      if (!nb.interface || !serverIp || !publicUrl) throw dfError('DF_ERR_CONFIG', `--dhcp ${nb.dhcp} needs --interface`);
      const { startDhcp } = await import('../../src/dhcp/server.js');
      const { tableBooter } = await import('../../src/dhcp/policy.js');
      // Releases before the pool moved into the database kept it in this file: import it once.
      if (nb.dhcp === 'full') {
        const { importLeaseFile } = await import('../../src/dhcp/leases.js');
        await importLeaseFile(path.join(dataDir, 'dhcp-leases.json'), meta.dhcp, log);
      }
      const d = await startDhcp({
        mode: nb.dhcp, interface: nb.interface, serverIp, log,
        booter: tableBooter({ scriptUrl: `${publicUrl}/boot/ipxe`, available, tftpServer: serverIp, ...(nb.secureBoot ? { secureBootFile: SECURE_BOOT_FILES.shim } : {}) }),
        ...(nb.dhcp === 'full' && nb.dhcpRange ? {
          pool: { first: nb.dhcpRange.first, last: nb.dhcpRange.last, netmask: ifAddr!.netmask, leaseSeconds: 3600, leases: meta.dhcp },
        } : {}),
        onAddress: (mac, ip) => macByIp.set(ip, mac),
        onEvent: (e) => {
          if (e.ip) macByIp.set(e.ip, e.mac);
          endpoints.record('dhcp', e.mac, { kind: e.kind, ...(e.ip ? { ip: e.ip } : {}), ...(e.file ? { file: e.file } : {}), ...(e.arch !== undefined ? { arch: e.arch } : {}), ipxe: e.isIpxe })
            .catch((err: unknown) => log.warn({ err, mac: e.mac }, 'recording a DHCP event failed'));
        },
      });
      closers.push(() => d.close());
      log.info({ mode: nb.dhcp, interface: nb.interface, serverIp, script: `${publicUrl}/boot/ipxe`, secureBoot: nb.secureBoot !== null }, 'DHCP answering PXE clients');
      if (nb.ipv6Ra) {
        const { startRa } = await import('../../src/ra/responder.js');
        const r = await startRa({ interface: nb.interface, log });
        closers.push(() => r.close());
      }
    }
    return { publicUrl, close };
  } catch (err) {
    await close();
    throw err;
  }
}
