import { readFileSync } from 'node:fs';
import type { ApiClient } from '../api/client.js';
import type { KeysAnswer, SignedStatement, Version } from '../api/schemas.js';
import { hashBytes, idHex } from '../chunk/id.js';
import { dfError } from '../errors.js';
import { extendRing, openStatement, ringOf, type ManifestBody } from './statements.js';
import { parseTrustFile } from './trust.js';

/**
 * `deskfuse image verify`: a version's signed manifest checked against the keys of a trust file (and
 * the keys they endorse through the server's chain), and its index bytes against the manifest.
 */
export async function verifyVersion(client: ApiClient, image: string, rev: string, trustFile: string): Promise<{ image: string; version: number; keyId: string; viaChain: boolean; index: string }> {
  let text: string;
  try {
    text = readFileSync(trustFile, 'utf8');
  } catch (err) {
    throw dfError('DF_ERR_USAGE', `--trust: cannot read ${trustFile}: ${(err as Error).message}`, { option: '--trust' }, err);
  }
  const ring = ringOf(parseTrustFile(text, trustFile));
  const trusted = new Set(ring.keys());
  const v = (await client.json<Version>('GET', `/api/v1/images/${encodeURIComponent(image)}/resolve?rev=${encodeURIComponent(rev)}`)).body;
  extendRing(ring, (await client.json<KeysAnswer>('GET', '/api/v1/keys')).body.chain);
  const signed = (await client.json<SignedStatement>('GET', `/api/v1/images/${encodeURIComponent(image)}/versions/${v.version}/manifest`)).body;
  const m = openStatement<ManifestBody>(signed, 'manifest', ring, `manifest of ${image}@${v.version}`);
  if (m.image !== image || m.version !== v.version) throw dfError('DF_ERR_SIG_MISMATCH', `the manifest is of ${m.image}@${m.version}, not ${image}@${v.version}`, { image, version: v.version });
  const got = idHex(hashBytes((await client.binary('GET', `/api/v1/images/${encodeURIComponent(image)}/versions/${v.version}/index`)).body));
  if (got !== m.index) throw dfError('DF_ERR_SIG_MISMATCH', `the index of ${image}@${v.version} hashes to ${got}, not to ${m.index} as its signed manifest says`, { image, version: v.version, index: got, signed: m.index });
  return { image, version: v.version, keyId: signed.keyId, viaChain: !trusted.has(signed.keyId), index: got };
}
