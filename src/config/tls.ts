import path from 'node:path';
import { checkKeys } from './keys.js';

/**
 * `tls` block of the server config. Resolved at load: `auto` becomes `on` unless the HTTP listen
 * address is loopback (then nothing crosses a network, and `npm start` stays plain HTTP on 127.0.0.1).
 *
 *   mode       auto | on | off                         (flag --tls, env DESKFUSE_TLS)
 *   listen     HTTPS address, default the HTTP host:8443 (flag --https-listen, env DESKFUSE_HTTPS_LISTEN)
 *   certFile, keyFile   an admin's certificate (PEM, chain after the leaf) and key; without them a
 *              private CA in <data>/tls issues one (src/tls/pki.ts)
 *   caFile     the CA clients pin for an admin's certificate (default: the last certificate of certFile)
 *   names      DNS names and addresses of the private CA's server certificate (default: localhost,
 *              the host name, every address of the machine)
 *   plainHttp  boot (default): plain HTTP from other machines serves only what carries no secret (the
 *              iPXE script and boot stage files, the desktop OS's commit-request and keepalive); all:
 *              everything, also over HTTP (a site cache such as Varnish on a trusted link)
 */
export interface TlsConfig {
  readonly mode: 'on' | 'off';
  readonly listen: { readonly host: string; readonly port: number };
  readonly certFile: string | null;
  readonly keyFile: string | null;
  readonly caFile: string | null;
  readonly names: readonly string[] | null;
  readonly plainHttp: 'boot' | 'all';
  /** Where the private CA lives: `<data>/tls`. */
  readonly dir: string;
}

export const TLS_KEYS = ['mode', 'listen', 'certFile', 'keyFile', 'caFile', 'names', 'plainHttp'];
export const HTTPS_PORT = 8443;

/** 127.0.0.0/8, ::1, localhost: an address no other machine reaches. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:127\./.test(h);
}

export function loadTls(
  file: Record<string, unknown>, env: Record<string, string | undefined>, flags: { tls?: string; httpsListen?: string },
  http: { host: string; port: number }, dataDir: string,
  parseHostPort: (s: string, problems: string[], what: string) => { host: string; port: number } | undefined, problems: string[],
): TlsConfig {
  checkKeys('tls', file, TLS_KEYS, problems);
  const mode = flags.tls ?? env.DESKFUSE_TLS ?? file.mode ?? 'auto';
  if (!['auto', 'on', 'off'].includes(mode as string)) problems.push(`tls: expected auto, on or off, got ${JSON.stringify(mode)}`);
  const resolved = mode === 'on' || (mode === 'auto' && !isLoopback(http.host)) ? 'on' : 'off';
  const rawListen = flags.httpsListen ?? env.DESKFUSE_HTTPS_LISTEN ?? file.listen;
  let listen = { host: http.host, port: HTTPS_PORT };
  if (typeof rawListen === 'string') listen = parseHostPort(rawListen, problems, 'httpsListen') ?? listen;
  else if (rawListen !== undefined && rawListen !== null) problems.push('tls.listen: expected HOST:PORT');
  if (resolved === 'on' && listen.port === http.port && listen.port !== 0 && listen.host === http.host) problems.push(`httpsListen: ${listen.host}:${listen.port} is also the HTTP address`);
  const str = (k: string): string | null => {
    const v = file[k];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string' || !v) { problems.push(`tls.${k}: expected a file path`); return null; }
    return path.resolve(v);
  };
  const certFile = str('certFile');
  const keyFile = str('keyFile');
  const caFile = str('caFile');
  if ((certFile === null) !== (keyFile === null)) problems.push('tls: give both certFile and keyFile (or neither, for a private CA in <data>/tls)');
  let names: string[] | null = null;
  if (file.names !== undefined && file.names !== null) {
    if (!Array.isArray(file.names) || file.names.length === 0 || !file.names.every((n) => typeof n === 'string' && /^[A-Za-z0-9.:*-]{1,253}$/.test(n))) {
      problems.push('tls.names: expected a non-empty list of host names and addresses');
    } else names = file.names as string[];
  }
  const plainHttp = file.plainHttp ?? 'boot';
  if (plainHttp !== 'boot' && plainHttp !== 'all') problems.push(`tls.plainHttp: expected boot or all, got ${JSON.stringify(plainHttp)}`);
  return { mode: resolved, listen, certFile, keyFile, caFile, names, plainHttp: plainHttp as TlsConfig['plainHttp'], dir: path.join(path.resolve(dataDir), 'tls') };
}
