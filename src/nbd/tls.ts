import net from 'node:net';
import tls from 'node:tls';
import { dfError } from '../errors.js';
import type { NbdTlsMode } from './negotiate.js';

/**
 * TLS for the NBD server (proto.md "TLS support"): the credentials (x509 certificate and/or
 * pre-shared keys) and the in-session upgrade of a connection's socket after NBD_OPT_STARTTLS.
 * The option haggling itself stays in negotiate.ts; this file only touches sockets.
 */
export interface NbdTlsOptions {
  mode: NbdTlsMode;
  /** x509: the server certificate (leaf, then its chain) and key, PEM. */
  cert?: { certPem: string; keyPem: string };
  /** PSK: keys by identity (the `identity:hexkey` lines of a psktool / qemu `keys.psk` file). */
  psk?: ReadonlyMap<string, Buffer>;
}

/**
 * Parses a PSK file as GnuTLS's psktool writes it and QEMU's tls-creds-psk and nbdkit read it: one
 * `identity:hexkey` per line. Pure; DF_ERR_CONFIG naming the line for anything else.
 */
export function parsePskFile(text: string, file = 'PSK file'): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const at = line.lastIndexOf(':');
    const id = line.slice(0, at);
    const hex = line.slice(at + 1);
    const where = `${file} line ${i + 1}`;
    if (at <= 0 || id.length > 128) throw dfError('DF_ERR_CONFIG', `${where}: expected IDENTITY:HEXKEY (identity 1-128 characters)`, { field: 'nbd.tlsPskFile', line: i + 1 });
    if (!/^(?:[0-9a-fA-F]{2}){16,64}$/.test(hex)) throw dfError('DF_ERR_CONFIG', `${where}: the key of ${JSON.stringify(id)} must be 16-64 bytes of hex`, { field: 'nbd.tlsPskFile', line: i + 1 });
    if (keys.has(id)) throw dfError('DF_ERR_CONFIG', `${where}: identity ${JSON.stringify(id)} appears twice`, { field: 'nbd.tlsPskFile', line: i + 1 });
    keys.set(id, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw dfError('DF_ERR_CONFIG', `${file}: no IDENTITY:HEXKEY line`, { field: 'nbd.tlsPskFile' });
  return keys;
}

/**
 * TLS ≥ 1.2 only (proto.md "TLS versions": MUST support 1.2, older SHOULD NOT be on by default).
 * With keys: Node's default list ends in `!PSK`, so the (EC)DHE-PSK suites are added without it
 * (plain-PSK key exchange stays out: no forward secrecy). TLS 1.3 external PSKs through OpenSSL's
 * PSK callback are SHA-256 keys, so SHA-256 suites go first and the server's order wins; else a
 * GnuTLS client (QEMU, libnbd) is offered a SHA-384 suite, its PSK is dropped and it fails with
 * "Insufficient credentials" (measured).
 */
export interface NbdTlsContext {
  secureContext: tls.SecureContext;
  pskCallback?: (socket: tls.TLSSocket, identity: string) => Buffer | null;
}

/** Made once per server (parsing the key per connection would cost a handshake's worth of CPU). */
export function nbdTlsContext(o: NbdTlsOptions): NbdTlsContext {
  if (!o.cert && !o.psk) throw dfError('DF_ERR_CONFIG', 'NBD over TLS needs a certificate or pre-shared keys', { field: 'nbd.tls' });
  const psk = o.psk;
  const secureContext = tls.createSecureContext({
    minVersion: 'TLSv1.2',
    ...(o.cert ? { cert: o.cert.certPem, key: o.cert.keyPem } : {}),
    // The default list ends in `!PSK`, which would remove suites added after it.
    ...(psk ? { ciphers: `${TLS13_SHA256}:${PSK_CIPHERS}:${tls.DEFAULT_CIPHERS.replace(/:!PSK\b/, '')}:!kPSK`, honorCipherOrder: true } : {}),
  });
  // An unknown identity gets no key: the handshake fails.
  return { secureContext, ...(psk ? { pskCallback: (_s: tls.TLSSocket, identity: string) => psk.get(identity) ?? null } : {}) };
}

const TLS13_SHA256 = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
const PSK_CIPHERS = 'ECDHE-PSK-AES256-GCM-SHA384:ECDHE-PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:DHE-PSK-CHACHA20-POLY1305';

/**
 * Upgrades `raw` in place to a server-side TLS socket (proto.md "FORCEDTLS mode": after NBD_REP_ACK
 * all further data is TLS). The caller has taken its own listeners off `raw` and attaches them to
 * the returned socket; `secured` resolves undefined once the handshake is done, or why it failed.
 */
export function upgradeToTls(raw: net.Socket, context: NbdTlsContext): { socket: tls.TLSSocket; secured: Promise<string | undefined> } {
  const socket = new tls.TLSSocket(raw, {
    isServer: true,
    secureContext: context.secureContext,
    requestCert: false,
    ...(context.pskCallback ? { pskCallback: context.pskCallback } : {}),
  });
  const secured = new Promise<string | undefined>((resolve) => {
    socket.once('secure', () => resolve(undefined));
    socket.once('error', (err) => resolve(`TLS handshake failed: ${err.message}`));
    // A client that rejects our certificate hangs up: with allowHalfOpen that is only an 'end'.
    socket.once('end', () => resolve('TLS handshake failed: the client closed the connection'));
    socket.once('close', () => resolve('TLS handshake failed: the connection closed'));
  });
  return { socket, secured };
}
