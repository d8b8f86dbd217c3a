import type { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { DetailedPeerCertificate } from 'node:tls';
import type { Agent } from 'undici';
import { dfError, isDeskfuseError } from '../errors.js';
import { normalizeFingerprint } from '../tls/fingerprint.js';

/**
 * Whom an https server must prove to be. Plain `https://` with neither uses the system's CAs (an
 * admin's public certificate). There is no option to skip verification.
 *   ca             PEM of the only CA trusted (`--ca FILE`)
 *   caFingerprint  SHA-256 of a certificate of the server's chain (`--ca-fingerprint`, `deskfuse.ca=`):
 *                  the chain is read once over a TLS handshake that sends no request, the certificate
 *                  with that hash becomes the only CA, and every request then goes over a normally
 *                  verified connection (chain and host name). A chain without it is DF_ERR_TLS_PIN.
 */
export interface TlsTrust {
  ca?: string;
  caFingerprint?: string;
}

/** The fetch of one base URL: global fetch, or undici's with a dispatcher trusting only the pinned CA. */
export type FetchFn = (url: string, init: RequestInit) => Promise<Response>;

/** Per https origin, the fetch its requests go through; shared by the clients made from one (withToken). */
export class TlsPins {
  private readonly agents = new Map<string, Promise<Agent>>();
  private readonly fingerprint: string | undefined;

  constructor(readonly trust: TlsTrust = {}, private readonly handshakeMs = 20_000) {
    this.fingerprint = trust.caFingerprint ? normalizeFingerprint(trust.caFingerprint) : undefined;
  }

  /** Whether any https server gets a pinned CA (else: the system CAs). */
  get pinned(): boolean {
    return this.trust.ca !== undefined || this.fingerprint !== undefined;
  }

  /**
   * The fetch for a request to `server` (a base URL). For a pinned https origin the first call reads
   * the chain (fingerprint pin); a failure to connect is thrown as fetch throws it ("fetch failed"
   * with the socket error as cause) so the client retries and fails over as for any other.
   */
  async fetchFor(server: string): Promise<FetchFn> {
    const dispatcher = await this.dispatcherFor(server);
    if (!dispatcher) return fetch;
    const { fetch: undiciFetch } = await import('undici');
    return (url, init) => undiciFetch(url, { ...(init as object), dispatcher } as Parameters<typeof undiciFetch>[1]) as unknown as Promise<Response>;
  }

  /**
   * The same over undici's request API: the body is a Node stream, not a web stream (a quarter of the
   * main thread's CPU per byte: large bodies read piece by piece). Only what the client reads is
   * there: ok, status, headers.get and an async-iterable body. Errors are thrown as fetch throws them.
   */
  async requestFor(server: string): Promise<FetchFn> {
    const dispatcher = await this.dispatcherFor(server);
    const { request: undiciRequest } = await import('undici');
    return async (url, init) => {
      let r;
      try {
        r = await undiciRequest(url, {
          method: init.method as 'GET', headers: init.headers as Record<string, string>, body: init.body as Uint8Array | string | undefined,
          signal: init.signal ?? undefined, ...(dispatcher ? { dispatcher } : {}),
        });
      } catch (err) {
        if (init.signal?.aborted) throw init.signal.reason;
        throw new TypeError('fetch failed', { cause: err });
      }
      const h = r.headers;
      const get = (name: string): string | null => {
        const v = h[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
      };
      return { ok: r.statusCode >= 200 && r.statusCode < 300, status: r.statusCode, headers: { get }, body: r.body } as unknown as Response;
    };
  }

  /** The dispatcher trusting only the pinned CA for a pinned https origin, else none (the global one). */
  private async dispatcherFor(server: string): Promise<Agent | undefined> {
    const u = new URL(server);
    if (u.protocol !== 'https:' || !this.pinned) return undefined;
    const key = u.origin;
    let agent = this.agents.get(key);
    if (!agent) {
      agent = this.makeAgent(u);
      this.agents.set(key, agent);
      agent.catch(() => this.agents.delete(key)); // the next request tries again
    }
    return agent;
  }

  private async makeAgent(u: URL): Promise<Agent> {
    const ca = this.trust.ca ?? (await this.caByFingerprint(u));
    // Loaded here, not at start: undici and node:tls took ~0.2 s of every agent run's start-up, and
    // only a pinned https server needs them.
    const { Agent } = await import('undici');
    return new Agent({ connect: { ca }, keepAliveTimeout: 10_000 });
  }

  /** The certificate of the server's chain whose SHA-256 is the pin, as PEM. */
  private async caByFingerprint(u: URL): Promise<string> {
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const chain = await peerChain(host, Number(u.port || 443), this.handshakeMs);
    const found = chain.find((c) => c.fingerprint256 === this.fingerprint);
    if (!found) {
      throw dfError('DF_ERR_TLS_PIN', `${u.origin}: no certificate of the server's chain has the pinned fingerprint: expected ${this.fingerprint}, the server presented ${chain.map((c) => `${c.fingerprint256} (${c.subject.replace(/\n/g, ', ')})`).join('; ')}. Nothing was sent. Is this the right server, and the fingerprint the one it printed (or <data>/tls/ca.fingerprint)?`, {
        server: u.origin, expected: this.fingerprint, presented: chain.map((c) => c.fingerprint256),
      });
    }
    return found.toString();
  }

  /** Closes the pinned origins' connections (clients in long-lived processes, tests). */
  async close(): Promise<void> {
    const all = [...this.agents.values()];
    this.agents.clear();
    await Promise.all(all.map((a) => a.then((x) => x.close(), () => undefined)));
  }
}

/**
 * The certificates a TLS server presents, leaf first, read from a handshake that sends no request:
 * verification is off for this one connection only because nothing is trusted from it but the bytes
 * of a certificate whose hash the caller already knows.
 */
export async function peerChain(host: string, port: number, timeoutMs: number): Promise<X509Certificate[]> {
  const [{ default: tls }, { X509Certificate }] = await Promise.all([import('node:tls'), import('node:crypto')]);
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host, port, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) });
    const timer = setTimeout(() => sock.destroy(Object.assign(new Error(`no TLS handshake within ${timeoutMs} ms`), { code: 'UND_ERR_CONNECT_TIMEOUT' })), timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const out: X509Certificate[] = [];
      const seen = new Set<string>();
      let c: DetailedPeerCertificate | undefined = sock.getPeerCertificate(true);
      while (c?.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        out.push(new X509Certificate(c.raw));
        c = c.issuerCertificate;
      }
      sock.destroy();
      resolve(out);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      // As fetch throws it: the client's retry and failover read the socket error's code from `cause`.
      reject(new TypeError('fetch failed', { cause: err }));
    });
  });
}

/** Certificate errors of a TLS connection (Node's / OpenSSL's codes): the server is not who it should be, or is not trusted. */
const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
]);

/**
 * A fetch failure that is a certificate refusal, as DF_ERR_TLS_UNTRUSTED naming the options that
 * pin the server's CA; undefined for any other failure (and a pin mismatch stays what it is).
 */
export function untrustedError(cause: unknown, server: string, pins: TlsPins): Error | undefined {
  if (isDeskfuseError(cause)) return cause;
  const c = (cause as { cause?: { code?: string; message?: string } }).cause;
  if (!c?.code || !UNTRUSTED.has(c.code)) return undefined;
  const how = pins.pinned
    ? 'the pinned CA did not sign it for this name: check the server URL (its host must be one of the certificate\'s names; config tls.names) and the pin'
    : "pin the server's CA: --ca FILE (the server's <data>/tls/ca.crt) or --ca-fingerprint SHA256 (printed at the server's first start; <data>/tls/ca.fingerprint), or env DESKFUSE_CA / DESKFUSE_CA_FINGERPRINT";
  return dfError('DF_ERR_TLS_UNTRUSTED', `${server}: the server's certificate is not trusted (${c.code}: ${c.message ?? ''}); ${how}`, { server, reason: c.code }, cause);
}
