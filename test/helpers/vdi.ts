import { spawnSync } from 'node:child_process';
import { execa } from 'execa';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { nbdTlsSetup, startNbdService, type NbdService } from '../../server/services/nbd.js';
import { loadServerConfig } from '../../src/config/server.js';
import { silentLogger } from '../../src/log.js';

/** The NBD clients the VDI tests drive; fails with the install command when one is missing (never a skip). */
export function requireNbdClients(): void {
  for (const [tool, pkg] of [['qemu-img', 'qemu-utils'], ['qemu-io', 'qemu-utils'], ['nbdinfo', 'libnbd-bin'], ['nbdcopy', 'libnbd-bin']] as const) {
    if (spawnSync(tool, ['--version']).status !== 0) throw new Error(`${tool} missing: bash scripts/setup-deps.sh (apt-get install -y ${pkg})`);
  }
}

export interface VdiAppliance {
  appliance: Appliance;
  url: string;
  token: string;
  nbdPort: number;
  nbd: NbdService;
  /** nbd://127.0.0.1:PORT/NAME */
  nbdUrl(name: string): string;
  /** With nbdTls: a directory holding the server's CA as ca-cert.pem (what QEMU and libnbd read). */
  caDir: string | null;
  close(): Promise<void>;
}

/**
 * An appliance in this process with its HTTP API and NBD server on free loopback ports (`serverName`,
 * and its own VDI and NBD cache folders when it shares a data directory with another server).
 */
export async function startVdiAppliance(dataDir: string, o: { anonymousRead?: boolean; serverName?: string; vdiDir?: string; nbdCacheDir?: string; configFile?: string; nbdTls?: 'on' | 'required' } = {}): Promise<VdiAppliance> {
  const config = loadServerConfig({ ...(o.configFile ? { file: o.configFile } : {}), flags: {
    data: dataDir, listen: '127.0.0.1:0', logLevel: 'silent', nbdListen: '127.0.0.1:0', ...(o.anonymousRead ? { nbdAnonymousRead: true } : {}),
    ...(o.serverName ? { serverName: o.serverName } : {}), ...(o.nbdTls ? { nbdTls: o.nbdTls } : {}),
  } });
  const appliance = await openAppliance(config, undefined, { ...(o.vdiDir ? { vdiDir: o.vdiDir } : {}), ...(o.nbdCacheDir ? { nbdCacheDir: o.nbdCacheDir } : {}) });
  const url = await appliance.app.listen({ host: '127.0.0.1', port: 0 });
  // As server/main.ts does it (the material from <data>/tls when HTTPS has not loaded it).
  const tls = await nbdTlsSetup(config, null);
  const nbd = await startNbdService(config.nbd, appliance, silentLogger, tls);
  const token = readFileSync(path.join(dataDir, 'admin.token'), 'utf8').trim();
  let caDir: string | null = null;
  if (tls) {
    caDir = path.join(dataDir, 'nbd-client-tls');
    mkdirSync(caDir, { recursive: true });
    writeFileSync(path.join(caDir, 'ca-cert.pem'), tls.material.caPem);
  }
  return {
    appliance, url, token, nbdPort: nbd.port!, nbd, caDir,
    nbdUrl: (name) => `nbd://127.0.0.1:${nbd.port}/${name}`,
    close: async () => {
      await nbd.close();
      await appliance.close();
    },
  };
}

/**
 * Run a tool; returns stdout, throws with its stderr on failure. Asynchronous on purpose: the server
 * under test runs in this process, so a synchronous child would block the very loop that answers it.
 */
export async function run(cmd: string, args: string[], timeout = 60_000): Promise<string> {
  const r = await execa(cmd, args, { timeout, reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** Run a tool that may fail; returns its exit status and output. */
export async function fails(cmd: string, args: string[]): Promise<{ status: number | undefined; stderr: string; stdout: string }> {
  const r = await execa(cmd, args, { timeout: 60_000, reject: false, stdin: 'ignore' });
  return { status: r.exitCode, stderr: r.stderr, stdout: r.stdout };
}
