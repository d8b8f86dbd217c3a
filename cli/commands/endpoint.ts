import type { BootEvent, BootEventList, Endpoint, EndpointDeleted, EndpointList, EndpointShow } from '../../src/api/schemas.js';
import { BOOT_METHODS, ENDPOINT_MODES } from '../../src/endpoint/model.js';
import type { EndpointChange } from '../../src/endpoint/endpoints.js';
import { dfError } from '../../src/errors.js';
import { checkDesktopName } from '../../src/image/names.js';
import { clientFrom, need, parseCommand, type Io } from '../args.js';
import { ENDPOINT } from '../spec.js';
import { emit, fmtTime, table } from '../output.js';

const evText = (e: BootEvent) => `${fmtTime(e.at, { seconds: true })}  ${(e.endpoint ?? e.mac).padEnd(16)} ${e.phase.padEnd(9)} ${Object.entries(e.detail).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ')}\n`;

export async function endpointCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(ENDPOINT, args, io);
  if (typeof p === 'number') return p;
  const { sub, values, positionals } = p;
  const client = clientFrom(values, io.env);
  const json = values.json;
  const id = () => encodeURIComponent(need(positionals[0], 'endpoint ID (id, name or MAC)'));
  const change = (): EndpointChange => {
    const c: EndpointChange = {};
    if (values.desktop !== undefined) c.desktop = values.desktop === 'none' ? null : checkDesktopName(values.desktop, '--desktop');
    if (values.name !== undefined) c.name = values.name;
    if (values.mode !== undefined) {
      if (!ENDPOINT_MODES.includes(values.mode as never)) throw dfError('DF_ERR_USAGE', `--mode: expected ${ENDPOINT_MODES.join(' or ')}, got ${JSON.stringify(values.mode)}`, { option: '--mode' });
      c.mode = values.mode as EndpointChange['mode'];
    }
    if (values['boot-method'] !== undefined) {
      if (!BOOT_METHODS.includes(values['boot-method'] as never)) throw dfError('DF_ERR_USAGE', `--boot-method: expected one of ${BOOT_METHODS.join(', ')}, got ${JSON.stringify(values['boot-method'])}`, { option: '--boot-method' });
      c.bootMethod = values['boot-method'] as EndpointChange['bootMethod'];
    }
    return c;
  };
  const show = (e: Endpoint) => `endpoint ${e.name} (${e.id}): ${e.state}, desktop ${e.desktop ?? '-'}, mode ${e.mode}, boot ${e.bootMethod}\n` +
    `  MACs      ${e.macs.join(', ')}\n  firmware  ${e.firmware ?? '-'}   uuid ${e.uuid ?? '-'}   serial ${e.serial ?? '-'}\n` +
    `  disk      ${e.disk}${e.diskVersion !== null ? ` at version ${e.diskVersion}` : ''}${e.commitRequested ? ' (commit requested)' : ''}   secret ${e.secret ?? '-'}\n` +
    `  last seen ${fmtTime(e.lastSeen)}\n  last sync ${e.lastSync ? `${e.lastSync.result} ${e.lastSync.action} at ${fmtTime(e.lastSync.at)}${e.lastSync.version !== undefined ? ` → version ${e.lastSync.version}` : ''}${e.lastSync.seconds !== undefined ? ` in ${e.lastSync.seconds.toFixed(1)} s` : ''}${e.lastSync.error ? `: ${e.lastSync.error}` : ''}` : '-'}\n`;

  switch (sub) {
    case 'list': {
      const r = (await client.json<EndpointList>('GET', '/api/v1/endpoints')).body;
      emit(io, json, r, () => table([['ENDPOINT', 'MAC', 'STATE', 'DESKTOP', 'MODE', 'DISK', 'LAST SEEN', 'LAST SYNC'], ...r.endpoints.map((e) => [
        e.name, e.macs[0] ?? '-', e.state, e.desktop ?? '-', e.mode, `${e.disk}${e.diskVersion !== null ? `@${e.diskVersion}` : ''}`, fmtTime(e.lastSeen),
        e.lastSync ? `${e.lastSync.result} ${e.lastSync.action}` : '-',
      ])]));
      return 0;
    }
    case 'show': {
      const e = (await client.json<EndpointShow>('GET', `/api/v1/endpoints/${id()}`)).body;
      emit(io, json, e, () => `${show(e)}  events:\n${e.events.map((x) => `    ${evText(x)}`).join('')}`);
      return 0;
    }
    case 'add': {
      const mac = need(positionals[0], 'endpoint MAC');
      const e = (await client.json<Endpoint>('POST', '/api/v1/endpoints', { body: { mac, ...change() } })).body;
      emit(io, json, e, () => show(e));
      return 0;
    }
    case 'approve': {
      const e = (await client.json<Endpoint>('POST', `/api/v1/endpoints/${id()}/approve`, { body: change() })).body;
      emit(io, json, e, () => show(e));
      return 0;
    }
    case 'assign': {
      const c = change();
      if (Object.keys(c).length === 0) throw dfError('DF_ERR_USAGE', 'assign: give --desktop, --mode, --boot-method or --name');
      const e = (await client.json<Endpoint>('PATCH', `/api/v1/endpoints/${id()}`, { body: c })).body;
      emit(io, json, e, () => show(e));
      return 0;
    }
    case 'disable': {
      const e = (await client.json<Endpoint>('POST', `/api/v1/endpoints/${id()}/disable`, { body: {} })).body;
      emit(io, json, e, () => show(e));
      return 0;
    }
    case 'reprovision': {
      const e = (await client.json<Endpoint>('POST', `/api/v1/endpoints/${id()}/reprovision`, { body: {} })).body;
      emit(io, json, e, () => show(e));
      return 0;
    }
    case 'delete': {
      const r = (await client.json<EndpointDeleted>('DELETE', `/api/v1/endpoints/${id()}${values.force ? '?force=true' : ''}`)).body;
      emit(io, json, r, () => `endpoint ${r.name} (${r.id}) deleted: its next boot is an unknown machine's\n`);
      return 0;
    }
    case 'events': {
      const q = positionals[0] ? `?endpoint=${encodeURIComponent(positionals[0])}` : '';
      if (!values.follow) {
        const r = (await client.json<BootEventList>('GET', `/api/v1/events${q}`)).body;
        emit(io, json, r, () => r.events.map(evText).join(''));
        return 0;
      }
      for await (const data of client.sse(`/api/v1/events${q}`)) {
        const e = JSON.parse(data) as BootEvent;
        io.out.write(json ? `${JSON.stringify(e)}\n` : evText(e));
      }
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown endpoint command ${JSON.stringify(sub)}; see deskfuse endpoint --help`);
  }
}
