import { checkImageName, checkRefName } from '../../src/image/names.js';
import type { Ref, RefDeleted, RefList, RefLog } from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import { clientFrom, need, parseCommand, parseExpect, type Io } from '../args.js';
import { REF } from '../spec.js';
import { emit, fmtTime, table } from '../output.js';

export async function refCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(REF, args, io);
  if (typeof p === 'number') return p;
  const { sub, values, positionals } = p;
  const client = clientFrom(values, io.env);
  const image = checkImageName(need(positionals[0], 'IMAGE'));
  switch (sub) {
    case 'list': {
      const r = (await client.json<RefList>('GET', `/api/v1/images/${image}/refs`)).body;
      emit(io, values.json, r, () => table([['REF', 'VERSION', 'UPDATED'], ...r.refs.map((x) => [x.name, String(x.version), fmtTime(x.updatedAt)])]));
      return 0;
    }
    case 'set': {
      const ref = checkRefName(need(positionals[1], 'REF'));
      const version = Number(need(positionals[2], 'VERSION'));
      if (!Number.isInteger(version) || version < 1) throw dfError('DF_ERR_USAGE', `VERSION must be a positive integer, got ${positionals[2]}`);
      const ex = need(values.expect, '--expect OLD (the version the ref is at now, or "none" to create it)');
      const expect = parseExpect(ex);
      const r = (await client.json<Ref>('PUT', `/api/v1/images/${image}/refs/${ref}`, {
        body: { version, expect, ...(values.reason ? { reason: values.reason } : {}) }, idempotent: false,
      })).body;
      emit(io, values.json, r, () => `${image}@${ref}: ${expect ?? 'none'} -> ${r.version}\n`);
      return 0;
    }
    case 'log': {
      const ref = positionals[1] ? checkRefName(positionals[1]) : undefined;
      const q = `limit=${Number(values.limit)}${ref ? `&ref=${encodeURIComponent(ref)}` : ''}`;
      const r = (await client.json<RefLog>('GET', `/api/v1/images/${image}/reflog?${q}`)).body;
      emit(io, values.json, r, () => table([['TIME', 'REF', 'FROM', 'TO', 'BY', 'REASON'], ...r.entries.map((e) => [
        fmtTime(e.at), e.ref, String(e.oldVersion ?? '-'), e.deleted ? '(deleted)' : String(e.newVersion), e.author, e.reason,
      ])]));
      return 0;
    }
    case 'delete': {
      const ref = checkRefName(need(positionals[1], 'REF'));
      const r = (await client.json<RefDeleted>('DELETE', `/api/v1/images/${image}/refs/${ref}${values.force ? '?force=true' : ''}`)).body;
      emit(io, values.json, r, () => `${image}@${ref} deleted (it was at version ${r.version})\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown ref command ${JSON.stringify(sub)}`);
  }
}
