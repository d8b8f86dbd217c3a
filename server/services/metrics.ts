import { createServer } from 'node:http';
import type { Logger } from '../../src/log.js';
import type { Metrics } from '../../src/metrics.js';

export interface MetricsService {
  port: number;
  close(): Promise<void>;
}

/**
 * `--metrics-listen HOST:PORT`: GET /metrics without a token, for a Prometheus on a trusted network.
 * Nothing else is served there (every other path is 404): the API stays behind its tokens on --listen.
 */
export async function startMetricsService(listen: { host: string; port: number }, metrics: Metrics, log: Logger): Promise<MetricsService> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify({ code: 'DF_ERR_NOT_FOUND', message: `only GET /metrics is served on the metrics address, not ${req.method} ${path}` }));
      return;
    }
    metrics.render().then((text) => {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(req.method === 'HEAD' ? undefined : text);
    }, (err: unknown) => {
      log.error({ err }, 'metrics could not be rendered');
      res.writeHead(500, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify({ code: 'DF_ERR_INTERNAL', message: 'internal error' }));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: listen.host, port: listen.port, exclusive: true }, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  log.info({ host: listen.host, port }, 'metrics listening (GET /metrics, no token)');
  return {
    port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
