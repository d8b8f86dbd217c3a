import type { Desktop, DesktopDeleted, DesktopReset, DesktopList, DesktopToken, Lease, LeaseBroken } from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import { checkDesktopName, checkImageName, checkRefName } from '../../src/image/names.js';
import { clientFrom, need, parseCommand, parseExpect, type Io } from '../args.js';
import { DESKTOP } from '../spec.js';
import { emit, fmtTime, plural, table } from '../output.js';

const line = (d: Desktop) => (d.ref ?? `follows ${d.follows}`);
const leaseText = (l: Lease | null) => (l ? `${l.holder} (fencing ${l.fencing}) since ${fmtTime(l.since)}, until ${fmtTime(l.expiresAt)}` : '-');

export async function desktopCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(DESKTOP, args, io);
  if (typeof p === 'number') return p;
  const { sub, values, positionals } = p;
  const client = clientFrom(values, io.env);
  const json = values.json;
  const name = () => checkDesktopName(need(positionals[0], 'desktop NAME'), 'NAME');
  const path = (n: string) => `/api/v1/desktops/${n}`;

  switch (sub) {
    case 'create': {
      const n = name();
      const image = checkImageName(need(values.image, '--image IMAGE'));
      if (values.mode !== 'persistent' && values.mode !== 'restore') throw dfError('DF_ERR_USAGE', `--mode: expected persistent or restore, got ${JSON.stringify(values.mode)}`, { option: '--mode' });
      const body = { name: n, image, mode: values.mode, ...(values.from ? { from: checkRefName(values.from, '--from') } : {}) };
      const d = (await client.json<Desktop>('POST', '/api/v1/desktops', { body })).body;
      emit(io, json, d, () => d.ref
        ? `desktop ${d.name} (persistent) on ${d.image}: ${d.ref} at version ${d.head}, from ${d.follows}\n`
        : `desktop ${d.name} (restore) on ${d.image}: follows ${d.follows}, now version ${d.head}\n`);
      return 0;
    }
    case 'list': {
      const r = (await client.json<DesktopList>('GET', '/api/v1/desktops')).body;
      emit(io, json, r, () => table([['DESKTOP', 'IMAGE', 'MODE', 'LINE', 'HEAD', 'LEASE'], ...r.desktops.map((d) => [
        d.name, d.image, d.mode, line(d), String(d.head), d.lease ? `${d.lease.holder} (fencing ${d.lease.fencing})` : '-',
      ])]));
      return 0;
    }
    case 'show': {
      const d = (await client.json<Desktop>('GET', path(name()))).body;
      emit(io, json, d, () => `desktop ${d.name}: ${d.mode} on image ${d.image}, ${line(d)}, head version ${d.head}\n` +
        `  created ${fmtTime(d.createdAt)}\n  lease   ${leaseText(d.lease)}\n`);
      return 0;
    }
    case 'token': {
      const n = name();
      let body = {};
      if (values.ttl !== undefined) {
        const ttl = Number(values.ttl);
        if (!/^\d+$/.test(values.ttl) || ttl < 1) throw dfError('DF_ERR_USAGE', `--ttl: expected a number of seconds, got ${JSON.stringify(values.ttl)}`, { option: '--ttl' });
        body = { ttlSeconds: ttl };
      }
      const t = (await client.json<DesktopToken>('POST', `${path(n)}/tokens`, { body })).body;
      emit(io, json, t, () => `${t.token}\n`);
      if (!json) io.err.write(`token of scope ${t.scope}, expires ${fmtTime(t.expiresAt)}\n`);
      return 0;
    }
    case 'reset': {
      const n = name();
      const body = {
        ...(values.to ? { to: checkRefName(values.to, '--to') } : {}),
        ...(values.expect !== undefined ? { expect: parseExpect(values.expect) } : {}),
        ...(values.force ? { force: true } : {}),
      };
      const d = (await client.json<DesktopReset>('POST', `${path(n)}/reset`, { body })).body;
      emit(io, json, d, () => `desktop ${d.name}: ${d.ref} is now version ${d.head} (reset to ${values.to ?? d.follows}); ` +
        `${d.dropped === null ? 'it had no head' : `dropped head v${d.dropped} (kept in the ref log)`}\n` +
        (d.overrode ? `  the lease of ${d.overrode.holder} (fencing ${d.overrode.fencing}, since ${fmtTime(d.overrode.since)}) was left in place: its next commit will be kept as a conflict\n` : ''));
      return 0;
    }
    case 'lease break': {
      const n = name();
      const r = (await client.json<LeaseBroken>('POST', `${path(n)}/lease/break`)).body;
      emit(io, json, r, () => r.broken
        ? `lease of desktop ${n} broken: it was held by ${r.broken.holder} (fencing ${r.broken.fencing}) since ${fmtTime(r.broken.since)}\n`
        : `desktop ${n} had no lease\n`);
      return 0;
    }
    case 'delete': {
      const n = name();
      const r = (await client.json<DesktopDeleted>('DELETE', `${path(n)}${values.force ? '?force=true' : ''}`)).body;
      emit(io, json, r, () => `desktop ${n} deleted (image ${r.image})` +
        `${r.endpointsUnassigned.length ? `; endpoints unassigned: ${r.endpointsUnassigned.join(', ')}` : ''}` +
        `${r.sessionsDiscarded.length ? `; VDI sessions discarded: ${r.sessionsDiscarded.join(', ')}` : ''}` +
        `${r.tokensRevoked ? `; ${plural(r.tokensRevoked, 'token')} revoked` : ''}\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown desktop command ${JSON.stringify(sub)}`);
  }
}
