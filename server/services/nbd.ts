import type { NbdConfig } from '../../src/config/server.js';
import type { Logger } from '../../src/log.js';
import { startNbd } from '../../src/nbd/server.js';
import type { Appliance } from '../appliance.js';

export interface NbdService {
  port: number | null;
  close(): Promise<void>;
}

/** The NBD server for the hypervisor pool (off with `--nbd-listen off`); tells the API its port for the URLs it hands out. */
export async function startNbdService(config: NbdConfig, appliance: Appliance, log: Logger): Promise<NbdService> {
  if (!config.listen) return { port: null, close: async () => {} };
  const server = await startNbd({ host: config.listen.host, port: config.listen.port, provider: appliance.exports, log: log.child({ svc: 'nbd' }) });
  appliance.ctx.vdi.nbd.port = server.port;
  log.info({ host: config.listen.host, port: server.port, anonymousRead: config.anonymousRead }, 'nbd server listening');
  return {
    port: server.port,
    close: async () => {
      appliance.ctx.vdi.nbd.port = null;
      await server.close();
    },
  };
}
