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

/**
 * The server's version-signing key (src/sign/statements.ts), in the data directory:
 *
 *   keys/signing.key       the current Ed25519 private key, PKCS#8 PEM, mode 0600, made at first start
 *   keys/chain.json        the key chain: the first public key and one endorsement per rotation
 *                          (the new public key signed by the one before), oldest first
 *   keys/retired/ID.key    keys rotated out (kept so an operator can still prove what they signed)
 *
 * Several servers on one database must share these files (copy keys/ to each before it starts).
 */
export class SigningKey {
  private initrd?: { keyId: string; bytes: Buffer; hash: string };

  private constructor(
    private key: KeyObject,
    public keyId: string,
    public chain: KeyChain,
    private readonly dir: string,
  ) {}

  static async open(dataDir: string): Promise<SigningKey> {
    const dir = path.join(dataDir, 'keys');
    const file = path.join(dir, 'signing.key');
    try {
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const chainFile = path.join(dir, 'chain.json');
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
      return signer;
    } catch (err) {
      if (err instanceof Error && (err as { code?: string }).code === 'DF_ERR_SIG_KEY') throw err;
      throw dfError('DF_ERR_SIG_KEY', `the signing key in ${dir} cannot be read or made: ${(err as Error).message}`, { dir }, err);
    }
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
