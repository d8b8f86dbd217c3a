import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { resolveNbdTls, type NbdConfig } from '../../src/config/server.js';
import { dfError } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { startNbd } from '../../src/nbd/server.js';
import { parsePskFile, type NbdTlsOptions } from '../../src/nbd/tls.js';
import { defaultNames, ensureServerTls, type ServerTls } from '../../src/tls/pki.js';
import type { Appliance } from '../appliance.js';

export interface NbdService {
  port: number | null;
  close(): Promise<void>;
}

/** The keys of nbd.tlsPskFile (psktool format); DF_ERR_CONFIG for a file that cannot be read or parsed. */
export async function readNbdPsk(nbd: NbdConfig): Promise<Map<string, Buffer> | undefined> {
  const file = nbd.tlsPskFile;
  if (!file || nbd.tls === 'off' || !nbd.listen) return undefined;
  const text = await fsp.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw dfError('DF_ERR_CONFIG', `nbd.tlsPskFile: cannot read ${file}: ${err.code ?? err.message}`, { field: 'nbd.tlsPskFile', path: file }, err);
  });
  return parsePskFile(text, file);
}

/**
 * NBD's TLS (config nbd.tls), with the server's TLS material: the certificate HTTPS serves when the
 * server has it (`serverTls`, loaded once by the appliance), else — NBD alone wants TLS — the same
 * private CA in `<data>/tls` (src/tls/pki.ts), covering nbd.publicHost too. Undefined: NOTLS (or no NBD).
 */
export async function nbdTlsSetup(config: { dataDir: string; nbd: NbdConfig }, serverTls: ServerTls | null, psk?: Map<string, Buffer>): Promise<(NbdTlsOptions & { material: ServerTls }) | undefined> {
  const mode = resolveNbdTls(config.nbd, serverTls !== null);
  if (mode === 'off' || !config.nbd.listen) return undefined;
  const material = serverTls ?? await ensureServerTls({
    dir: path.join(config.dataDir, 'tls'),
    names: [...defaultNames(), ...(config.nbd.publicHost ? [config.nbd.publicHost] : [])],
  });
  return { mode, cert: material, ...(psk ? { psk } : {}), material };
}

/** The thread entry, built: dist/src/vdi/nbd-thread.js (from source, under the test runner, it is absent: no threads). */
const NBD_THREAD = fileURLToPath(new URL('../../src/vdi/nbd-thread.js', import.meta.url));

/** NBD worker threads: nbd.threads (DESKFUSE_NBD_THREADS; 0 = serve on the main thread), by default the cores, at most 4. */
export function nbdThreads(config: Pick<NbdConfig, 'threads'>): number {
  return config.threads ?? Math.min(4, availableParallelism());
}

/** The NBD server for the hypervisor pool (off with `--nbd-listen off`); tells the API its port for the URLs it hands out. */
export async function startNbdService(config: NbdConfig, appliance: Appliance, log: Logger, tls?: NbdTlsOptions & { material?: ServerTls }): Promise<NbdService> {
  if (!config.listen) return { port: null, close: async () => {} };
  const server = await startNbd({ host: config.listen.host, port: config.listen.port, provider: appliance.exports, log: log.child({ svc: 'nbd' }), ...(tls ? { tls } : {}), threads: { count: nbdThreads(config), script: NBD_THREAD } });
  appliance.ctx.vdi.nbd.port = server.port;
  // Hypervisors are sent nbds:// URLs whenever the server speaks TLS (with `on` a client may still skip it).
  appliance.ctx.vdi.nbd.tls = tls !== undefined;
  appliance.ctx.vdi.sessions.nbdTls = tls !== undefined;
  log.info({
    host: config.listen.host, port: server.port, anonymousRead: config.anonymousRead, tls: tls?.mode ?? 'off',
    ...(tls?.material ? { caFingerprint: tls.material.caFingerprint } : {}), ...(tls?.psk ? { pskIdentities: tls.psk.size } : {}),
  }, 'nbd server listening');
  return {
    port: server.port,
    close: async () => {
      appliance.ctx.vdi.nbd.port = null;
      await server.close();
    },
  };
}
