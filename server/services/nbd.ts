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

/**
 * NBD's TLS (config nbd.tls, nbd.tlsPskFile), with the server's TLS material: the certificate HTTPS
 * serves when the caller has it (`serverTls`, loaded once by the composition root), else — NBD alone
 * wants TLS — the same private CA in `<data>/tls` (src/tls/pki.ts), covering nbd.publicHost too.
 * Undefined: NOTLS (or no NBD). DF_ERR_CONFIG for an unreadable or malformed PSK file.
 */
export async function nbdTlsSetup(config: { dataDir: string; nbd: NbdConfig }, serverTls: ServerTls | null): Promise<(NbdTlsOptions & { material: ServerTls }) | undefined> {
  const mode = resolveNbdTls(config.nbd, serverTls !== null);
  if (mode === 'off' || !config.nbd.listen) return undefined;
  // The PSK file first: a bad one stops the start before anything is written.
  let psk: Map<string, Buffer> | undefined;
  const file = config.nbd.tlsPskFile;
  if (file) {
    const text = await fsp.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw dfError('DF_ERR_CONFIG', `nbd.tlsPskFile: cannot read ${file}: ${err.code ?? err.message}`, { field: 'nbd.tlsPskFile', path: file }, err);
    });
    psk = parsePskFile(text, file);
  }
  const material = serverTls ?? await ensureServerTls({
    dir: path.join(config.dataDir, 'tls'),
    names: [...defaultNames(), ...(config.nbd.publicHost ? [config.nbd.publicHost] : [])],
  });
  return { mode, cert: material, ...(psk ? { psk } : {}), material };
}

/** The NBD server for the hypervisor pool (off with `--nbd-listen off`); tells the API its port for the URLs it hands out. */
export async function startNbdService(config: NbdConfig, appliance: Appliance, log: Logger, tls?: NbdTlsOptions & { material?: ServerTls }): Promise<NbdService> {
  if (!config.listen) return { port: null, close: async () => {} };
  const server = await startNbd({ host: config.listen.host, port: config.listen.port, provider: appliance.exports, log: log.child({ svc: 'nbd' }), ...(tls ? { tls } : {}) });
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
