import { loadServerConfig, type ConfigSources } from '../src/config/server.js';
import { openAppliance } from './appliance.js';
import { createLogger } from './log.js';
import { listenError, probeListen, type ListenTarget } from './listen-check.js';
import { startMetricsService, type MetricsService } from './services/metrics.js';
import { nbdTlsSetup, readNbdPsk, startNbdService, type NbdService } from './services/nbd.js';
import { startNetboot, type NetbootServices } from './services/netboot.js';
import { grubConfigFor } from './routes/boot.js';
import { startGcService } from './services/gc.js';
import { startPruneService } from './services/prune.js';
import { startScrubService } from './services/scrub.js';
import { closeHttps, listenHttps } from './tls.js';
import type { Server as HttpsServer } from 'node:https';

/**
 * `deskfuse server`: the composition root. config → logger → stores → app → listen → signals → close.
 * Returns when the server has stopped.
 */
export async function runServer(src: ConfigSources, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const warnings: string[] = [];
  const config = loadServerConfig({ ...src, warn: (m) => warnings.push(m) });
  const log = createLogger(config, process.stdout);
  for (const w of warnings) log.warn({}, w);
  // Tests kill a server in the middle of a garbage collection: this slows each of its batches down.
  const gcStepMs = Number(process.env.DESKFUSE_TEST_GC_STEP_MS ?? 0);
  const httpTarget: ListenTarget = { service: 'HTTP', ...config.listen, advice: 'stop the other program or choose another address with --listen HOST:PORT' };
  const nbdTarget: ListenTarget | undefined = config.nbd.listen
    ? { service: 'NBD', ...config.nbd.listen, advice: 'is another deskfuse server running on this machine? give --nbd-listen off (no VDI exports) or --nbd-listen HOST:PORT' }
    : undefined;
  const metricsTarget: ListenTarget | undefined = config.metricsListen
    ? { service: 'metrics', ...config.metricsListen, advice: 'choose another address with --metrics-listen HOST:PORT, or --metrics-listen off' }
    : undefined;
  const httpsTarget: ListenTarget | undefined = config.tls.mode === 'on'
    ? { service: 'HTTPS', ...config.tls.listen, advice: 'choose another address with --https-listen HOST:PORT (or --tls off: plain HTTP only)' }
    : undefined;
  // Before anything is created: a start that cannot listen leaves no data directory and no token behind.
  await probeListen([httpTarget, httpsTarget, nbdTarget, metricsTarget].filter((t) => t !== undefined));
  // A bad nbd.tlsPskFile stops the start here, before anything is written.
  const nbdPsk = await readNbdPsk(config.nbd);
  const appliance = await openAppliance(config, log, gcStepMs > 0 ? { gcStep: () => new Promise((r) => setTimeout(r, gcStepMs)) } : {});
  let url: string;
  try {
    url = await appliance.app.listen({ host: config.listen.host, port: config.listen.port });
  } catch (err) {
    await appliance.close();
    throw listenError(httpTarget, err);
  }
  let httpsServer: HttpsServer | undefined;
  let httpsUrl: string | undefined;
  if (httpsTarget && appliance.tls) {
    try {
      httpsServer = await listenHttps(appliance.app, appliance.tls, httpsTarget.host, httpsTarget.port);
    } catch (err) {
      await appliance.close();
      throw listenError(httpsTarget, err);
    }
    const port = (httpsServer.address() as { port: number }).port;
    if (appliance.ctx.tls) appliance.ctx.tls.port = port;
    const h = httpsTarget.host.includes(':') ? `[${httpsTarget.host}]` : httpsTarget.host;
    httpsUrl = `https://${h}:${port}`;
  }
  log.info({ url, ...(httpsUrl ? { https: httpsUrl, caFingerprint: appliance.tls!.caFingerprint } : {}), dataDir: config.dataDir }, 'deskfuse server listening');
  let netboot: NetbootServices | undefined;
  let nbd: NbdService | undefined;
  let metricsService: MetricsService | undefined;
  try {
    const port = (appliance.app.server.address() as { port: number }).port;
    netboot = await startNetboot(config.netboot, port, config.dataDir, appliance.ctx.endpoints, appliance.ctx.meta, log, {
      tftp: config.tftp, metrics: appliance.ctx.metrics, grubConfig: (q) => grubConfigFor(appliance.ctx, q), trustInitrd: () => appliance.ctx.signing.key.trustInitrd().bytes,
    });
    // NBD serves the certificate HTTPS serves (appliance.tls, loaded once); without HTTPS, nbd.tls on or
    // required makes NBD load the same <data>/tls material itself.
    const nbdTls = await nbdTlsSetup(config, appliance.tls ?? null, nbdPsk);
    nbd = await startNbdService(config.nbd, appliance, log, nbdTls).catch((err: unknown) => { throw nbdTarget ? listenError(nbdTarget, err) : err; });
    if (metricsTarget) metricsService = await startMetricsService(metricsTarget, appliance.ctx.metrics, log).catch((err: unknown) => { throw listenError(metricsTarget, err); });
  } catch (err) {
    await nbd?.close();
    await netboot?.close();
    if (httpsServer) await closeHttps(httpsServer);
    await appliance.close();
    throw err;
  }

  // Shown once everything listens: a start that fails leaves the token in admin.token, never half-announced.
  if (appliance.newAdminToken) {
    out.write(
      `\nAdmin token (shown once; also saved to ${config.dataDir}/admin.token, mode 0600):\n\n  ${appliance.newAdminToken}\n\n` +
        `  export DESKFUSE_TOKEN=$(cat ${config.dataDir}/admin.token)\n\n`,
    );
  }
  // Likewise the private CA's fingerprint, once, when it was made: what clients on other machines pin.
  if (appliance.tls?.createdCa && httpsUrl) {
    out.write(
      `\nHTTPS on ${httpsUrl} with a private CA made in ${appliance.tls.dir} (shown once; also in ${appliance.tls.dir}/ca.fingerprint).\n` +
        `Its SHA-256 fingerprint, for clients to pin:\n\n  ${appliance.tls.caFingerprint}\n\n` +
        `  deskfuse --server https://HOST:${httpsUrl.split(':').pop()} --ca-fingerprint ${appliance.tls.caFingerprint} image list\n` +
        `  (or --ca ${appliance.tls.dir}/ca.crt; env DESKFUSE_CA_FINGERPRINT / DESKFUSE_CA)\n\n`,
    );
  }

  const pruner = startPruneService(config.retention, appliance, log);
  const scrubber = startScrubService(config.scrub, config.dataDir, appliance, log);
  const collector = startGcService(config.gc, appliance, log);

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      pruner.close();
      scrubber.close();
      collector.close();
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      Promise.resolve(metricsService?.close()).then(() => httpsServer && closeHttps(httpsServer)).then(() => nbd!.close()).then(() => netboot!.close()).then(() => appliance.close()).then(resolve, (err) => {
        log.error({ err }, 'error while stopping');
        resolve();
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    log.debug({}, 'deskfuse server ready'); // every service started and the signals handled (tests wait for it)
  });
}
