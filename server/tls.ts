import https from 'node:https';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isLoopback } from '../src/config/tls.js';
import { dfError } from '../src/errors.js';
import type { ServerTls } from '../src/tls/pki.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * Served over plain HTTP to other machines even with TLS on: what iPXE fetches before it can
     * do better (the boot script, the boot stage's files) and what carries no secret.
     */
    plainHttp?: boolean;
  }
}

/** With TLS on: where HTTPS listens, what clients pin, and what plain HTTP still serves. */
export interface TlsContext {
  /** The HTTPS port (known once it listens; the https URLs the server hands out use it). */
  port: number;
  /** SHA-256 of the CA certificate clients pin (`AB:CD:…`). */
  caFingerprint: string;
  /** `boot`: plain HTTP from other machines serves only routes marked `plainHttp`; `all`: everything. */
  plainHttp: 'boot' | 'all';
}

const encrypted = (req: FastifyRequest): boolean => (req.raw.socket as { encrypted?: boolean } | null)?.encrypted === true;

/** `https://HOST:PORT` of a plain HTTP request's Host (or `base`'s host), for redirects and the boot stage. */
export function httpsBase(tls: TlsContext, hostname: string): string {
  const host = hostname.replace(/:\d+$/, '').replace(/^\[?([^\]]*:[^\]]*)\]?$/, '[$1]');
  return `https://${host}${tls.port === 443 ? '' : `:${tls.port}`}`;
}

/**
 * The plain HTTP gate (first onRequest hook): with TLS on, a request over plain HTTP from another
 * machine reaches only `plainHttp` routes. A browser's GET is redirected to HTTPS (the console);
 * anything else is 403 DF_ERR_TLS_REQUIRED naming the https URL, before a token is even looked up.
 * Loopback peers are let through: their bytes never cross a network (the CLI on the server itself,
 * a local site cache).
 */
export function installPlainHttpGate(app: FastifyInstance, tls: () => TlsContext | undefined): void {
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    const t = tls();
    if (!t || t.plainHttp === 'all' || encrypted(req) || req.routeOptions.config?.plainHttp) return;
    if (isLoopback(req.socket.remoteAddress ?? '')) return;
    const url = `${httpsBase(t, req.headers.host ?? req.hostname)}${req.url}`;
    if ((req.method === 'GET' || req.method === 'HEAD') && (req.headers.accept ?? '').includes('text/html')) {
      return reply.redirect(url, 308);
    }
    throw dfError('DF_ERR_TLS_REQUIRED', `${req.method} ${req.url.split('?')[0]} carries a token or a secret: send it over HTTPS (${url}); plain HTTP serves only the network boot's first fetches`, { https: url });
  });
}

/**
 * The HTTPS listener: a node:https server handing every request to the same fastify app (its routes,
 * hooks and console), so one process serves both. TLS 1.2 at least.
 */
export async function listenHttps(app: FastifyInstance, material: Pick<ServerTls, 'certPem' | 'keyPem'>, host: string, port: number): Promise<https.Server> {
  await app.ready();
  const server = https.createServer({ cert: material.certPem, key: material.keyPem, minVersion: 'TLSv1.2', keepAliveTimeout: 75_000 }, (req, res) => app.routing(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

/** Stops an HTTPS listener started by listenHttps (open keep-alive connections included). */
export async function closeHttps(server: https.Server): Promise<void> {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
