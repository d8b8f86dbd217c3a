import { dfError } from '../../src/errors.js';
import type { MintedToken, TokenList, TokenRevoked } from '../../src/api/schemas.js';
import { clientFrom, need, parseCommand, type Io } from '../args.js';
import { TOKEN } from '../spec.js';
import { emit, fmtTime, table } from '../output.js';

export async function tokenCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(TOKEN, args, io);
  if (typeof p === 'number') return p;
  const { sub, values, positionals } = p;
  const client = clientFrom(values, io.env);
  const json = values.json;
  switch (sub) {
    case 'list': {
      const r = (await client.json<TokenList>('GET', '/api/v1/tokens')).body;
      emit(io, json, r, () => table([['ID', 'SCOPE', 'CREATED', 'EXPIRES', 'LAST USED'], ...r.tokens.map((t) => [
        t.id, t.scope, fmtTime(t.createdAt), t.expiresAt ? fmtTime(t.expiresAt) : 'never', fmtTime(t.lastUsedAt),
      ])]));
      return 0;
    }
    case 'create': {
      const scope = need(values.scope, '--scope SCOPE');
      let ttl: number | undefined;
      if (values.ttl !== undefined) {
        ttl = Number(values.ttl);
        if (!/^\d+$/.test(values.ttl) || ttl < 1) throw dfError('DF_ERR_USAGE', `--ttl: expected a number of seconds, got ${JSON.stringify(values.ttl)}`, { option: '--ttl' });
      }
      const t = (await client.json<MintedToken>('POST', '/api/v1/tokens', { body: { scope, ...(ttl !== undefined ? { ttlSeconds: ttl } : {}) } })).body;
      emit(io, json, t, () => `${t.token}\n`);
      if (!json) io.err.write(`token ${t.id} of scope ${t.scope}, expires ${fmtTime(t.expiresAt)}\n`);
      return 0;
    }
    case 'revoke': {
      const id = need(positionals[0], 'token ID');
      if (!/^[0-9a-f]{16}$/.test(id)) throw dfError('DF_ERR_USAGE', `ID: expected the 16 hex digits deskfuse token list shows, got ${JSON.stringify(id)}`, { option: 'ID' });
      const r = (await client.json<TokenRevoked>('DELETE', `/api/v1/tokens/${id}`)).body;
      emit(io, json, r, () => `token ${r.revoked.id} (${r.revoked.scope}) revoked\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown token command ${JSON.stringify(sub)}`);
  }
}
