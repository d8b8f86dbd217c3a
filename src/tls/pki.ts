import { execFile } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { dfError } from '../errors.js';
import { fsyncDir, writeDurable } from '../fs/durable.js';
import { normalizeFingerprint, splitPem } from './fingerprint.js';

export { normalizeFingerprint, splitPem };

const run = promisify(execFile);

/**
 * The server's TLS material: either the certificate and key an admin gives, or a private CA made at
 * first start in `<data>/tls/` that issues the server's certificate. The CA outlives the server
 * certificate: a new name or a near expiry re-issues the leaf under the same CA, so the fingerprint
 * clients pin (the CA's) never changes. Certificates are made with Debian's `openssl` (Node's
 * crypto parses X.509 but cannot issue it).
 */
export interface ServerTls {
  /** PEM: the server certificate followed by its chain (the CA last for a private CA). */
  certPem: string;
  keyPem: string;
  /** PEM of the CA that clients trust (the private CA, or the admin's CA file if given). */
  caPem: string;
  /** SHA-256 of the CA certificate's DER, `AB:CD:…` as Node and openssl print it. */
  caFingerprint: string;
  /** Where the files are, and whether this call made the CA (print the fingerprint once). */
  dir: string;
  createdCa: boolean;
  /** DNS names and IP addresses the server certificate covers. */
  names: string[];
}

export interface TlsSource {
  /** `<data>/tls` for a private CA. */
  dir: string;
  /** Names for the server certificate (a private CA only); default: defaultNames(). */
  names?: readonly string[];
  /** An admin's certificate (PEM, chain after the leaf) and key; with them no CA is made. */
  certFile?: string;
  keyFile?: string;
  /** The CA clients should trust for an admin's certificate (default: the last cert of certFile). */
  caFile?: string;
}

/** Leaf lifetime (days) and how long before its end it is re-issued at start. */
const LEAF_DAYS = 825;
const RENEW_BEFORE_MS = 30 * 86400_000;
const CA_DAYS = 3650;
/** Certificates start this long before they are made (clients whose clock is behind). */
const BACKDATE_MS = 86400_000;

/** localhost, the host name and every address of the machine: what a LAN client may dial. */
export function defaultNames(): string[] {
  const out = new Set<string>(['localhost', '127.0.0.1', '::1', os.hostname()]);
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (!a.address.startsWith('fe80')) out.add(a.address);
  }
  return [...out];
}

/** Loads or makes the server's TLS material (see ServerTls); DF_ERR_CONFIG for unusable files. */
export async function ensureServerTls(src: TlsSource): Promise<ServerTls> {
  if (src.certFile || src.keyFile) return adminTls(src);
  return privateCaTls(src.dir, src.names?.length ? [...src.names] : defaultNames());
}

async function adminTls(src: TlsSource): Promise<ServerTls> {
  if (!src.certFile || !src.keyFile) {
    throw dfError('DF_ERR_CONFIG', 'tls: give both certFile and keyFile (or neither, for a private CA)', { option: 'tls' });
  }
  const read = (f: string, what: string) =>
    fsp.readFile(f, 'utf8').catch((err) => {
      throw dfError('DF_ERR_CONFIG', `tls: cannot read the ${what} ${f}: ${(err as Error).message}`, { option: 'tls', file: f }, err);
    });
  const certPem = await read(src.certFile, 'certificate');
  const keyPem = await read(src.keyFile, 'key');
  const chain = splitPem(certPem);
  if (!chain.length) throw dfError('DF_ERR_CONFIG', `tls: ${src.certFile} holds no PEM certificate`, { option: 'tls', file: src.certFile });
  const caPem = src.caFile ? await read(src.caFile, 'CA certificate') : chain[chain.length - 1]!;
  const ca = parseCert(caPem, src.caFile ?? src.certFile);
  const leaf = parseCert(chain[0]!, src.certFile);
  return { certPem, keyPem, caPem, caFingerprint: ca.fingerprint256, dir: path.dirname(src.certFile), createdCa: false, names: sanNames(leaf) };
}

async function privateCaTls(dir: string, names: string[]): Promise<ServerTls> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const f = (n: string) => path.join(dir, n);
  let createdCa = false;
  let caPem = await fsp.readFile(f('ca.crt'), 'utf8').catch(() => undefined);
  if (!caPem || !(await exists(f('ca.key')))) {
    await makeCa(dir);
    caPem = await fsp.readFile(f('ca.crt'), 'utf8');
    createdCa = true;
  }
  const ca = parseCert(caPem, f('ca.crt'));
  let leafPem = await fsp.readFile(f('server.crt'), 'utf8').catch(() => undefined);
  let keyPem = await fsp.readFile(f('server.key'), 'utf8').catch(() => undefined);
  const leaf = leafPem ? parseCert(splitPem(leafPem)[0] ?? leafPem, f('server.crt')) : undefined;
  const stale =
    createdCa || !leaf || !keyPem || !leaf.checkIssued(ca) ||
    Date.parse(leaf.validTo) - Date.now() < RENEW_BEFORE_MS ||
    !sameSet(sanNames(leaf), names);
  if (stale) {
    await issueLeaf(dir, names);
    leafPem = await fsp.readFile(f('server.crt'), 'utf8');
    keyPem = await fsp.readFile(f('server.key'), 'utf8');
  }
  return { certPem: leafPem!, keyPem: keyPem!, caPem, caFingerprint: ca.fingerprint256, dir, createdCa, names };
}

async function makeCa(dir: string): Promise<void> {
  const tmp = await fsp.mkdtemp(path.join(dir, '.tmp-ca-'));
  try {
    await openssl([
      'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', path.join(tmp, 'ca.key'), '-out', path.join(tmp, 'ca.csr'),
      '-subj', `/O=deskfuse/CN=deskfuse private CA ${os.hostname()}`.slice(0, 64),
    ]);
    await fsp.writeFile(path.join(tmp, 'ext.cnf'), 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n');
    await sign(tmp, { csr: path.join(tmp, 'ca.csr'), caKey: path.join(tmp, 'ca.key'), ext: path.join(tmp, 'ext.cnf'), days: CA_DAYS, out: path.join(tmp, 'ca.crt') });
    // The key first: a crash between the two renames leaves a key without a cert, which is made again.
    await install(path.join(tmp, 'ca.key'), path.join(dir, 'ca.key'), 0o600);
    await install(path.join(tmp, 'ca.crt'), path.join(dir, 'ca.crt'), 0o644);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

async function issueLeaf(dir: string, names: string[]): Promise<void> {
  const tmp = await fsp.mkdtemp(path.join(dir, '.tmp-leaf-'));
  const t = (n: string) => path.join(tmp, n);
  try {
    const san = names.map((n) => (isIp(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
    await fsp.writeFile(t('ext.cnf'), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`);
    await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', t('server.key'), '-out', t('server.csr'), '-subj', '/O=deskfuse/CN=deskfuse server']);
    await sign(tmp, { csr: t('server.csr'), caCert: path.join(dir, 'ca.crt'), caKey: path.join(dir, 'ca.key'), ext: t('ext.cnf'), days: LEAF_DAYS, out: t('leaf.crt') });
    // The chain clients receive: leaf then CA (so a client pinning the CA's fingerprint can find it).
    const ca = await fsp.readFile(path.join(dir, 'ca.crt'), 'utf8');
    await fsp.writeFile(t('server.crt'), (await fsp.readFile(t('leaf.crt'), 'utf8')) + ca);
    await install(t('server.key'), path.join(dir, 'server.key'), 0o600);
    await install(t('server.crt'), path.join(dir, 'server.crt'), 0o644);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Signs a CSR with `openssl ca` (self-signed without `caCert`), valid from a day ago: `openssl x509
 * -req` (OpenSSL 3.0) starts a certificate at this second, and a client whose clock is a little behind
 * the server's (an endpoint's RTC, a VM) would refuse it as not yet valid. Random 128-bit serial.
 */
async function sign(tmp: string, o: { csr: string; caCert?: string; caKey: string; ext: string; days: number; out: string }): Promise<void> {
  const work = await fsp.mkdtemp(path.join(tmp, 'ca-'));
  const cnf = path.join(work, 'ca.cnf');
  await fsp.writeFile(cnf, [
    '[ca]', 'default_ca = d', '[d]', `database = ${path.join(work, 'index.txt')}`, `new_certs_dir = ${work}`, `serial = ${path.join(work, 'serial')}`,
    'default_md = sha256', 'policy = any', 'unique_subject = no', 'copy_extensions = none', '[any]', 'organizationName = optional', 'commonName = supplied', '',
  ].join('\n'));
  await fsp.writeFile(path.join(work, 'index.txt'), '');
  await fsp.writeFile(path.join(work, 'serial'), `${randomBytes(16).toString('hex').replace(/^[89a-f]/, '7')}\n`); // positive
  const start = new Date(Date.now() - BACKDATE_MS).toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z');
  await openssl([
    'ca', '-batch', '-config', cnf, '-in', o.csr, '-keyfile', o.caKey, ...(o.caCert ? ['-cert', o.caCert] : ['-selfsign']),
    '-startdate', start, '-days', String(o.days), '-extfile', o.ext, '-notext', '-out', o.out,
  ]);
}

async function install(from: string, to: string, mode: number): Promise<void> {
  await writeDurable(to, await fsp.readFile(from), false, path.basename(to));
  await fsp.chmod(to, mode);
  await fsyncDir(path.dirname(to));
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args, { timeout: 60_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? 'openssl is not installed (apt-get install openssl)' : (e.stderr ?? e.message).trim().split('\n').slice(-2).join(' ');
    throw dfError('DF_ERR_CONFIG', `tls: cannot make the private CA: ${why}`, { option: 'tls' }, err);
  }
}

function parseCert(pem: string, file: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw dfError('DF_ERR_CONFIG', `tls: ${file} is not a PEM certificate: ${(err as Error).message}`, { option: 'tls', file }, err);
  }
}

/** The DNS names and IPs of a certificate's subjectAltName. */
export function sanNames(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '').split(/,\s*/).map((s) => s.replace(/^(DNS|IP Address):/, '')).filter(Boolean).map(normalizeIp);
}

function normalizeIp(s: string): string {
  // openssl prints IPv6 SANs expanded (0:0:0:0:0:0:0:1); compare them in one spelling.
  if (!s.includes(':')) return s;
  try {
    return new URL(`http://[${s}]/`).hostname.replace(/^\[|\]$/g, '');
  } catch {
    return s;
  }
}

function isIp(s: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(s) || s.includes(':');
}

function sameSet(a: string[], b: string[]): boolean {
  const x = new Set(a.map(normalizeIp));
  const y = new Set(b.map(normalizeIp));
  return x.size === y.size && [...x].every((n) => y.has(n));
}

async function exists(p: string): Promise<boolean> {
  return fsp.stat(p).then(() => true, () => false);
}
