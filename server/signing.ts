import { existsSync } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createHash, type KeyObject } from 'node:crypto';
import { STAGE_HASH_HEX } from './boot-stage.js';
import { trustFileOf, type TrustFile } from '../src/sign/trust.js';
import { trustInitrd } from '../src/sign/trust-initrd.js';
import { dfError } from '../src/errors.js';
import { keyIdOf, newSigningKey, privateKeyFromPem, privateKeyPem, rawPublicKey } from '../src/sign/ed25519.js';
import { signStatement, type EndorseBody, type KeyChain, type Signed, type StatementBody } from '../src/sign/statements.js';
import type { SqlEngine } from '../src/meta/sql.js';

/**
 * The server's version-signing key (src/sign/statements.ts), in the data directory:
 *
 *   keys/signing.key       the current Ed25519 private key, PKCS#8 PEM, mode 0600, made at first start
 *   keys/chain.json        the key chain: the first public key and one endorsement per rotation
 *                          (the new public key signed by the one before), oldest first
 *   keys/retired/ID.key    keys rotated out (kept so an operator can still prove what they signed)
 *
 * Several servers on one PostgreSQL database share one key through it (table signing_key, one row):
 * the first server to start puts its key and chain there (the files it had, or a new key), and every
 * server then takes the row and mirrors it into its keys/. A rotation replaces the row by
 * compare-and-swap on the chain; the other servers sign with the key before it until their next start,
 * which endpoints still accept (the chain holds it). On SQLite the files are the key.
 */
export class SigningKey {
  private initrd?: { keyId: string; bytes: Buffer; hash: string };

  private constructor(
    private key: KeyObject,
    public keyId: string,
    public chain: KeyChain,
    private readonly dir: string,
  ) {}

  private shared?: SqlEngine;

  static async open(dataDir: string, shared?: SqlEngine): Promise<SigningKey> {
    const dir = path.join(dataDir, 'keys');
    const file = path.join(dir, 'signing.key');
    try {
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const chainFile = path.join(dir, 'chain.json');
      if (shared) await adoptShared(shared, file, chainFile);
      if (!existsSync(file)) await writeSecret(file, privateKeyPem(newSigningKey()));
      const key = privateKeyFromPem(await fsp.readFile(file, 'utf8'));
      const raw = rawPublicKey(key);
      // A first start (or a key restored without its chain): the chain starts at this key.
      if (!existsSync(chainFile)) await writeJson(chainFile, { root: { keyId: keyIdOf(raw), key: raw.toString('base64') }, endorsements: [] } satisfies KeyChain);
      const chain = JSON.parse(await fsp.readFile(chainFile, 'utf8')) as KeyChain;
      const signer = new SigningKey(key, keyIdOf(raw), chain, dir);
      if (!signer.chainKeys().some((k) => k.equals(raw))) {
        // Signing with it would make every provisioned disk refuse the server's versions: say so at start instead.
        throw dfError('DF_ERR_SIG_KEY', `${file} (key ${signer.keyId}) is not in ${chainFile}: endpoints would refuse what it signs. Restore the key from a backup; or, accepting that every provisioned disk refuses it until reprovisioned, delete ${chainFile} to start a new chain`, { dir, keyId: signer.keyId });
      }
      if (shared) signer.shared = shared;
      return signer;
    } catch (err) {
      if (err instanceof Error && (err as { code?: string }).code === 'DF_ERR_SIG_KEY') throw err;
      throw dfError('DF_ERR_SIG_KEY', `the signing key in ${dir} cannot be read or made: ${(err as Error).message}`, { dir }, err);
    }
  }

  /**
   * Puts this key and chain in a shared database's row if it has none (admin migrate: the install's
   * key goes with it); a row already there is kept.
   */
  async share(db: SqlEngine): Promise<void> {
    await db.run('INSERT INTO signing_key (id, key_pem, chain, updated_at) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING', [privateKeyPem(this.key), JSON.stringify(this.chain), new Date().toISOString()]);
  }

  get publicKey(): Buffer {
    return rawPublicKey(this.key);
  }

  /** Every key of the chain: a boot stage that trusts them all accepts what any of them signed. */
  chainKeys(): Buffer[] {
    const c = this.chain;
    return [Buffer.from(c.root.key, 'base64'), ...c.endorsements.map((e) => Buffer.from((JSON.parse(e.body) as EndorseBody).key, 'base64'))];
  }

  /** The trust file for boot stages (src/sign/trust.ts). */
  trustFile(): TrustFile {
    return trustFileOf(this.chainKeys());
  }

  /** The trust initrd (src/sign/trust-initrd.ts) and its URL hash; made again only after a rotation. */
  trustInitrd(): { bytes: Buffer; hash: string } {
    if (this.initrd?.keyId !== this.keyId) {
      const bytes = trustInitrd(this.trustFile());
      this.initrd = { keyId: this.keyId, bytes, hash: createHash('sha256').update(bytes).digest('hex').slice(0, STAGE_HASH_HEX) };
    }
    return this.initrd;
  }

  sign(body: StatementBody): Signed {
    return signStatement(this.key, this.keyId, body);
  }

  /**
   * A new key, endorsed by the current one: written (chain first, then the key, each by rename), so
   * a crash leaves either the old key with a chain that already names the new one (harmless) or both.
   */
  async rotate(at: Date): Promise<{ from: string; to: string }> {
    const next = newSigningKey();
    const raw = rawPublicKey(next);
    const body: EndorseBody = { type: 'endorse', key: raw.toString('base64'), keyId: keyIdOf(raw), at: at.toISOString() };
    const chain: KeyChain = { ...this.chain, endorsements: [...this.chain.endorsements, this.sign(body)] };
    if (this.shared) {
      // Compare-and-swap on the chain this server holds: a rotation made meanwhile by another server wins.
      const n = await this.shared.run('UPDATE signing_key SET key_pem = ?, chain = ?, updated_at = ? WHERE id = 1 AND chain = ?', [privateKeyPem(next), JSON.stringify(chain), at.toISOString(), JSON.stringify(this.chain)]);
      if (n !== 1) throw dfError('DF_ERR_SIG_KEY', 'another server rotated the signing key meanwhile: restart this server to take it, then rotate again if still wanted', { keyId: this.keyId });
    }
    await fsp.mkdir(path.join(this.dir, 'retired'), { recursive: true, mode: 0o700 });
    await writeSecret(path.join(this.dir, 'retired', `${this.keyId}.key`), privateKeyPem(this.key));
    await writeJson(path.join(this.dir, 'chain.json'), chain);
    await writeSecret(path.join(this.dir, 'signing.key'), privateKeyPem(next));
    const from = this.keyId;
    this.key = next;
    this.keyId = body.keyId;
    this.chain = chain;
    return { from, to: this.keyId };
  }
}

/**
 * The site's key from the database into keys/: put there first when the row is missing (this server's
 * files, else a new key), then whatever the row holds (another server may have won the race) replaces
 * the local files, the local key kept under retired/ when it differs.
 */
async function adoptShared(db: SqlEngine, file: string, chainFile: string): Promise<void> {
  let row = await db.get('SELECT key_pem, chain FROM signing_key WHERE id = 1');
  if (!row) {
    const pem = existsSync(file) ? await fsp.readFile(file, 'utf8') : privateKeyPem(newSigningKey());
    const raw = rawPublicKey(privateKeyFromPem(pem));
    const chain = existsSync(chainFile) ? await fsp.readFile(chainFile, 'utf8') : JSON.stringify({ root: { keyId: keyIdOf(raw), key: raw.toString('base64') }, endorsements: [] } satisfies KeyChain);
    await db.run('INSERT INTO signing_key (id, key_pem, chain, updated_at) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING', [pem, JSON.stringify(JSON.parse(chain)), new Date().toISOString()]);
    row = await db.get('SELECT key_pem, chain FROM signing_key WHERE id = 1');
  }
  const pem = String(row!.key_pem);
  const local = existsSync(file) ? await fsp.readFile(file, 'utf8') : undefined;
  if (local !== undefined && local !== pem) {
    const id = keyIdOf(rawPublicKey(privateKeyFromPem(local)));
    await fsp.mkdir(path.join(path.dirname(file), 'retired'), { recursive: true, mode: 0o700 });
    await writeSecret(path.join(path.dirname(file), 'retired', `${id}.key`), local);
  }
  await writeJson(chainFile, JSON.parse(String(row!.chain)));
  if (local !== pem) await writeSecret(file, pem);
}

async function writeSecret(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
}

const writeJson = (file: string, v: unknown) => writeSecret(file, `${JSON.stringify(v, null, 2)}\n`);
