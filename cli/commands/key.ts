import { writeFileSync } from 'node:fs';
import type { KeysAnswer } from '../../src/api/schemas.js';
import { clientFrom, parseCommand, type Io } from '../args.js';
import { KEY } from '../spec.js';
import { emit } from '../output.js';

/** `deskfuse key show|rotate`: the server's version-signing key over the HTTP API (admin). */
export async function keyCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(KEY, args, io);
  if (typeof p === 'number') return p;
  const { sub, values } = p;
  const client = clientFrom(values, io.env);
  const json = values.json;
  let rotated: { from: string; to: string } | null = null;
  if (sub === 'rotate') rotated = (await client.json<{ from: string; to: string }>('POST', '/api/v1/keys/rotate')).body;
  const k = (await client.json<KeysAnswer>('GET', '/api/v1/keys')).body;
  if (values['trust-out']) writeFileSync(values['trust-out'], `${JSON.stringify(k.trust, null, 2)}\n`);
  emit(io, json, { ...k, ...(rotated ? { rotated } : {}) }, () =>
    `${rotated ? `rotated: ${rotated.from} -> ${rotated.to} (endorsed by ${rotated.from})\n` : ''}signing key ${k.keyId}; ${k.chain.endorsements.length} rotation(s) since the first key ${k.chain.root.keyId}${values['trust-out'] ? `; trust file written to ${values['trust-out']}` : ''}\n`);
  return 0;
}
