import type { Desktop, DesktopDeleted, DesktopReset, DesktopList, DesktopToken, Lease, LeaseBroken } from '../../src/api/schemas.js';
import { dfError } from '../../src/errors.js';
import { checkDesktopName, checkImageName, checkRefName } from '../../src/image/names.js';
import { clientFrom, need, parse, parseExpect, type Io } from '../args.js';
import { emit, table } from '../output.js';

const HELP = `deskfuse desktop create NAME --image IMAGE [--from REF] [--mode persistent|restore]
deskfuse desktop list | show NAME
deskfuse desktop token NAME [--ttl SECONDS]     (prints only the token: T=$(deskfuse desktop token alice))
deskfuse desktop reset NAME [--to REF] [--expect VERSION] [--force]
                                                (persistent: move desktops/NAME to REF's head, default the ref it
                                                follows; prints the head it dropped, kept in the ref log. --expect:
                                                only if the head is still VERSION. Refused while an endpoint or VDI
                                                session holds the lease; --force resets anyway and names the holder,
                                                whose next commit is then kept as a conflict)
deskfuse desktop lease break NAME
deskfuse desktop delete NAME [--force]          (its ref, lease and tokens; refused while leased, in a VDI
                                                session or assigned to endpoints, unless --force)
`;

const line = (d: Desktop) => (d.ref ?? `follows ${d.follows}`);
const leaseText = (l: Lease | null) => (l ? `${l.holder} (fencing ${l.fencing}) since ${l.since}, until ${l.expiresAt}` : '-');

export async function desktopCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parse(rest, {
    image: { type: 'string' },
    from: { type: 'string' },
    mode: { type: 'string', default: 'persistent' },
    ttl: { type: 'string' },
    to: { type: 'string' },
    expect: { type: 'string' },
    force: { type: 'boolean', default: false },
  });
  if (values.help || !sub || sub === '--help' || sub === '-h' || sub === 'help') {
    io.out.write(HELP);
    return sub ? 0 : 2;
  }
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
        `  created ${d.createdAt}\n  lease   ${leaseText(d.lease)}\n`);
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
      if (!json) io.err.write(`token of scope ${t.scope}, expires ${t.expiresAt}\n`);
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
        (d.overrode ? `  the lease of ${d.overrode.holder} (fencing ${d.overrode.fencing}, since ${d.overrode.since}) was left in place: its next commit will be kept as a conflict\n` : ''));
      return 0;
    }
    case 'lease': {
      const [op, target] = positionals;
      if (op !== 'break') throw dfError('DF_ERR_USAGE', `unknown desktop lease command ${JSON.stringify(op ?? '')}; expected: desktop lease break NAME`);
      const n = checkDesktopName(need(target, 'desktop NAME'), 'NAME');
      const r = (await client.json<LeaseBroken>('POST', `${path(n)}/lease/break`)).body;
      emit(io, json, r, () => r.broken
        ? `lease of desktop ${n} broken: it was held by ${r.broken.holder} (fencing ${r.broken.fencing}) since ${r.broken.since}\n`
        : `desktop ${n} had no lease\n`);
      return 0;
    }
    case 'delete': {
      const n = name();
      const r = (await client.json<DesktopDeleted>('DELETE', `${path(n)}${values.force ? '?force=true' : ''}`)).body;
      emit(io, json, r, () => `desktop ${n} deleted (image ${r.image})` +
        `${r.endpointsUnassigned.length ? `; endpoints unassigned: ${r.endpointsUnassigned.join(', ')}` : ''}` +
        `${r.sessionsDiscarded.length ? `; VDI sessions discarded: ${r.sessionsDiscarded.join(', ')}` : ''}` +
        `${r.tokensRevoked ? `; ${r.tokensRevoked} token(s) revoked` : ''}\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown desktop command ${JSON.stringify(sub)}\n${HELP}`);
  }
}
