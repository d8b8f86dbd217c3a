import { spawn } from 'node:child_process';
import { accessSync, constants as FS } from 'node:fs';
import nodePath from 'node:path';
import type { ApiClient } from '../../src/api/client.js';
import { dfError } from '../../src/errors.js';
import { checkDesktopName } from '../../src/image/names.js';
import { desktopUuid, findOvmf, kvmWorks, libvirtXml, qemuArgs, type OvmfFiles, type VmSpec, type VmTls } from '../../src/vdi/launch.js';
import { defaultStateDir, openDesktopState, startSwtpm, type DesktopState, type Swtpm } from '../../src/vdi/vm-host.js';
import type { VdiSession, VdiSessionCreated, VdiSessionList } from '../../src/api/schemas.js';
import { clientFrom, need, parseCommand, type Io } from '../args.js';
import { VDI } from '../spec.js';
import { emit, fmtTime, plural, table } from '../output.js';
import { fmtBytes } from '../../src/progress.js';

export async function vdiCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(VDI, args, io);
  if (typeof p === 'number') return p;
  const { sub, values, positionals, extra } = p;
  const client = clientFrom(values, io.env);
  const json = values.json;
  if (sub === 'start') return start(client, io, values, positionals, extra);
  const arg = positionals[0];
  const id = () => need(arg, 'session ID');
  const path = (s: string) => `/api/v1/vdi/sessions/${encodeURIComponent(s)}`;
  switch (sub) {
    case 'session create': {
      const desktop = checkDesktopName(need(arg, 'DESKTOP'), 'DESKTOP');
      const r = (await client.json<VdiSessionCreated>('POST', '/api/v1/vdi/sessions', { body: { desktop, force: values.force, autoCommit: !values['no-auto-commit'] } })).body;
      emit(io, json, { session: r.session.id, export: r.export, url: r.url, base: r.session.base, desktop: r.session.desktop, fencing: r.session.fencing }, () =>
        `VDI session ${r.session.id} on desktop ${r.session.desktop}: ${r.session.image}@${r.session.base}` +
        `${r.session.fencing !== null ? `, lease fencing ${r.session.fencing}` : ' (restore desktop: changes are discarded)'}\n` +
        `  url     ${r.url ?? '(the server runs without NBD: --nbd-listen)'}\n  export  ${r.export}\n` +
        `  ${r.session.autoCommit ? 'commits when the VM shuts down (its client flushes and disconnects)' : `commit with: deskfuse vdi session commit ${r.session.id}`}\n`);
      return 0;
    }
    case 'session list': {
      const q = new URLSearchParams({ ...(values.desktop ? { desktop: values.desktop } : {}), ...(values.all ? { all: 'true' } : {}) });
      const r = (await client.json<VdiSessionList>('GET', `/api/v1/vdi/sessions${q.size ? `?${q}` : ''}`)).body;
      emit(io, json, r, () => table([['SESSION', 'DESKTOP', 'BASE', 'STATE', 'CLIENTS', 'LAST DISCONNECT', 'OUTCOME', 'CREATED'], ...r.sessions.map((s) => [
        s.id, s.desktop, `${s.image}@${s.base}`, s.state, String(s.connections), s.lastDisconnect ? `${s.lastDisconnect} ${fmtTime(s.lastDisconnectAt)}` : '-',
        outcomeShort(s), fmtTime(s.createdAt),
      ])]));
      return 0;
    }
    case 'session show': {
      const s = (await client.json<VdiSession>('GET', path(id()))).body;
      emit(io, json, s, () => showText(s));
      return 0;
    }
    case 'session commit': {
      const s = (await client.json<VdiSession>('POST', path(id()) + `/commit${values.force ? '?force=true' : ''}`)).body;
      emit(io, json, s, () => `${outcomeText(s)}\n`);
      return s.outcome?.kind === 'conflict' ? 3 : 0;
    }
    case 'session discard': {
      const s = (await client.json<VdiSession>('POST', path(id()) + `/discard${values.force ? '?force=true' : ''}`)).body;
      emit(io, json, s, () => `VDI session ${s.id} discarded; desktop ${s.desktop}'s lease released\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown vdi command ${JSON.stringify(sub)}`);
  }
}

type Values = Record<string, unknown> & { json: boolean; force: boolean };

async function start(client: ApiClient, io: Io, values: Values, positionals: string[], extra: string[]): Promise<number> {
  const desktop = checkDesktopName(need(positionals[0], 'DESKTOP'), 'DESKTOP');
  const int = (v: unknown, opt: string, min: number, max: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw dfError('DF_ERR_USAGE', `${opt}: expected an integer ${min}-${max}, got ${JSON.stringify(v)}`, { option: opt });
    return n;
  };
  const memoryMiB = int(values.memory, '--memory', 64, 1 << 20);
  const cpus = int(values.cpus, '--cpus', 1, 256);
  const waitSeconds = int(values['wait-seconds'], '--wait-seconds', 1, 86400);
  let vnc: number | null = null;
  if (values.vnc !== undefined) {
    const m = /^:?(\d{1,4})$/.exec(String(values.vnc));
    if (!m) throw dfError('DF_ERR_USAGE', `--vnc: expected :N (display number), got ${JSON.stringify(values.vnc)}`, { option: '--vnc' });
    vnc = Number(m[1]);
  }
  if (!['auto', 'kvm', 'tcg'].includes(String(values.accel))) throw dfError('DF_ERR_USAGE', `--accel: expected auto, kvm or tcg, got ${JSON.stringify(values.accel)}`, { option: '--accel' });
  if (!['user', 'none'].includes(String(values.net))) throw dfError('DF_ERR_USAGE', `--net: expected user or none, got ${JSON.stringify(values.net)}`, { option: '--net' });
  const choice = <T extends string>(opt: string, allowed: readonly T[]): T => {
    const v = String(values[opt]);
    if (!(allowed as readonly string[]).includes(v)) throw dfError('DF_ERR_USAGE', `--${opt}: expected ${allowed.join(' or ')}, got ${JSON.stringify(values[opt])}`, { option: `--${opt}` });
    return v as T;
  };
  const firmware = choice('firmware', ['uefi', 'bios'] as const);
  const diskBus = choice('disk-bus', ['virtio', 'sata'] as const);
  const nicModel = choice('nic-model', ['virtio', 'e1000e'] as const);
  const secureBoot = values['secure-boot'] === true;
  const tpm = values.tpm === true;
  if (secureBoot && firmware !== 'uefi') throw dfError('DF_ERR_USAGE', '--secure-boot needs --firmware uefi', { option: '--secure-boot' });
  const accel = values.accel === 'auto' ? ((await kvmWorks()) ? 'kvm' : 'tcg') : (values.accel as 'kvm' | 'tcg');
  const xml = values['print-libvirt-xml'] === true;
  // Checked before the session exists: a bad option takes no lease.
  const tlsGiven = tlsOptions(values, xml);
  // QEMU here: OVMF must be on this host (libvirt finds its own on the host that runs the domain).
  let ovmf: OvmfFiles | null = null;
  if (!xml && firmware === 'uefi') {
    ovmf = findOvmf(secureBoot);
    if (!ovmf) {
      throw dfError('DF_ERR_TOOL_MISSING', `--firmware uefi: no OVMF${secureBoot ? ' Secure Boot build with Microsoft\'s keys enrolled' : ''} on this host (QEMU's firmware descriptors in /usr/share/qemu/firmware, or /usr/share/OVMF): apt-get install ovmf; or --firmware bios`, { tool: 'ovmf' });
    }
  }
  if (tpm && !xml && !onPath('swtpm', io.env)) throw dfError('DF_ERR_TOOL_MISSING', '--tpm: swtpm is not installed on this host: apt-get install swtpm', { tool: 'swtpm' });
  const stateDir = nodePath.resolve(String(values['state-dir'] ?? defaultStateDir(io.env)));

  const made = (await client.json<VdiSessionCreated>('POST', '/api/v1/vdi/sessions', { body: { desktop, force: values.force } })).body;
  if (!made.url) throw dfError('DF_ERR_CONFIG', 'the server runs without NBD (--nbd-listen off); a VDI session needs it');
  const u = new URL(made.url);
  const id = made.session.id;
  // nbds://: the server speaks TLS. Credentials given: TLS even if it does not (fail closed, never fall back to clear).
  const serverTls = u.protocol === 'nbds:';
  if (serverTls && !tlsGiven && !xml) {
    await client.json('POST', `/api/v1/vdi/sessions/${encodeURIComponent(id)}/discard`).catch(() => undefined);
    throw dfError('DF_ERR_USAGE', `the server speaks NBD over TLS (${u.protocol}//${u.host}): give --tls-dir DIR with DIR/ca-cert.pem, the server's CA (its <data>/tls/ca.crt); session ${id} was discarded`, { option: '--tls-dir' });
  }
  const tls: VmTls | null = tlsGiven ?? (serverTls ? { kind: 'x509', dir: '/etc/pki/qemu' } : null);
  const spec: VmSpec = {
    name: `deskfuse-${desktop}-${id}`, host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 10809),
    exportName: made.export, memoryMiB, cpus, accel, vnc, net: values.net as 'user' | 'none', tls,
    firmware, secureBoot, tpm, diskBus, nicModel, uuid: desktopUuid(desktop), desktop,
  };
  if (xml) {
    io.out.write(libvirtXml(spec));
    io.err.write(`VDI session ${id} created on ${desktop} (${made.session.image}@${made.session.base}). When the domain shuts down the session commits;\n` +
      `if it never connects: deskfuse vdi session discard ${id}\n` +
      (tls ? `NBD over TLS (tls='yes'): libvirt reads the CA from qemu.conf's nbd_tls_x509_cert_dir (ca-cert.pem there: the server's <data>/tls/ca.crt)\n` : ''));
    return 0;
  }

  // The desktop's NVRAM and TPM state on this host, and swtpm; both released however QEMU ends.
  let state: DesktopState | null = null;
  let swtpm: Swtpm | null = null;
  let code: number | null;
  const t0 = performance.now();
  try {
    if (firmware === 'uefi' || tpm) {
      state = openDesktopState(stateDir, desktop, { ovmf, secureBoot, tpm });
      if (state.ephemeral) io.err.write(`the state of desktop ${desktop} in ${nodePath.join(stateDir, desktop)} is in use by another vdi start on this host: this VM runs on a copy (its NVRAM and TPM changes are dropped)\n`);
    }
    if (tpm) swtpm = await startSwtpm(state!.tpmDir!);
    const args = qemuArgs({ ...spec, run: { ...(ovmf ? { ovmf: { ...ovmf, vars: state!.vars! } } : {}), ...(swtpm ? { tpmSocket: swtpm.socket } : {}) } }, extra);
    const fw = firmware === 'bios' ? 'BIOS' : `UEFI${secureBoot ? ' with Secure Boot' : ''}`;
    io.err.write(`VDI session ${id} on desktop ${desktop}: ${made.session.image}@${made.session.base}, qemu (${accel}, ${fw}${tpm ? ', TPM 2.0' : ''}` +
      `${vnc !== null ? `, VNC :${vnc}` : ''})${state ? `; NVRAM/TPM state ${state.dir}` : ''}\n`);
    code = await new Promise<number | null>((resolve, reject) => {
      // The VM's serial console goes to our stdout, its errors to our stderr.
      const q = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'inherit', 'inherit'] });
      q.once('error', (err) => reject(dfError('DF_ERR_TOOL_MISSING', `qemu-system-x86_64: ${err.message} (apt-get install qemu-system-x86)`, { tool: 'qemu-system-x86_64' }, err)));
      q.once('exit', (c) => resolve(c));
    });
  } catch (err) {
    // QEMU never ran: nothing connected, so the session is dropped (its lease with it).
    await client.json('POST', `/api/v1/vdi/sessions/${encodeURIComponent(id)}/discard`).catch(() => undefined);
    throw Object.assign(err as Error, { message: `${(err as Error).message}; session ${id} was discarded` });
  } finally {
    await swtpm?.stop();
    state?.release();
  }
  io.err.write(`qemu exited (${code}) after ${((performance.now() - t0) / 1000).toFixed(1)} s; waiting for the session's commit\n`);

  // The server commits once the VM's client has flushed and disconnected; a crashed VM leaves it open.
  const deadline = Date.now() + waitSeconds * 1000;
  let s: VdiSession;
  for (;;) {
    s = (await client.json<VdiSession>('GET', `/api/v1/vdi/sessions/${id}`)).body;
    const settled = s.state === 'committed' || s.state === 'discarded' || s.state === 'failed' || (s.state === 'open' && s.connections === 0 && s.lastDisconnect === 'dropped');
    if (settled || Date.now() > deadline) break;
    if (s.state === 'open' && s.connections === 0 && s.lastDisconnect === 'clean' && !s.autoCommit) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  // The VM's console shared our stdout: start on a fresh line so the last line is ours alone.
  io.out.write('\n');
  emit(io, values.json as boolean, { session: s, qemuExit: code }, () => `${outcomeText(s)}\n`);
  if (s.state === 'committed') return s.outcome?.kind === 'conflict' ? 3 : 0;
  return s.state === 'discarded' ? 0 : 1;
}

function onPath(bin: string, env: NodeJS.ProcessEnv): boolean {
  return (env.PATH ?? process.env.PATH ?? '').split(':').some((d) => {
    try {
      accessSync(nodePath.join(d || '.', bin), FS.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** --tls-dir [--tls-username]: QEMU's credential directory, checked before anything is created. */
function tlsOptions(values: Values, xml: boolean): VmTls | null {
  const dir = values['tls-dir'] as string | undefined;
  const user = values['tls-username'] as string | undefined;
  if (dir === undefined) {
    if (user !== undefined) throw dfError('DF_ERR_USAGE', '--tls-username needs --tls-dir DIR (DIR/keys.psk)', { option: '--tls-username' });
    return null;
  }
  if (user !== undefined && xml) throw dfError('DF_ERR_USAGE', '--print-libvirt-xml: libvirt has no pre-shared keys for NBD disks; use x509 (qemu.conf nbd_tls_x509_cert_dir)', { option: '--tls-username' });
  if (user !== undefined && !/^[\x21-\x7e]{1,128}$/.test(user)) throw dfError('DF_ERR_USAGE', `--tls-username: 1-128 printable characters, got ${JSON.stringify(user)}`, { option: '--tls-username' });
  const abs = nodePath.resolve(dir);
  const file = nodePath.join(abs, user !== undefined ? 'keys.psk' : 'ca-cert.pem');
  try {
    accessSync(file, FS.R_OK);
  } catch {
    throw dfError('DF_ERR_USAGE', `--tls-dir: ${file} is not readable (${user !== undefined ? 'the psktool key file' : "the server's CA, its <data>/tls/ca.crt"})`, { option: '--tls-dir', path: file });
  }
  return user !== undefined ? { kind: 'psk', dir: abs, username: user } : { kind: 'x509', dir: abs };
}

function outcomeShort(s: VdiSession): string {
  const o = s.outcome;
  if (!o) return '-';
  if (o.kind === 'conflict') return `conflict v${o.version}`;
  if (o.kind === 'fast-forward') return `v${o.version}`;
  return o.kind;
}

export function outcomeText(s: VdiSession): string {
  const o = s.outcome;
  if (s.state === 'discarded') return `VDI session ${s.id} discarded (nothing committed)`;
  if (s.state === 'failed') return `VDI session ${s.id} FAILED: ${s.failure ?? 'unknown reason'}; it cannot be committed. Discard it: deskfuse vdi session discard ${s.id}`;
  if (s.state !== 'committed' || !o) {
    return `VDI session ${s.id} is ${s.state}${s.lastDisconnect ? ` (last client ${s.lastDisconnect === 'dropped' ? 'dropped without disconnecting' : 'disconnected'})` : ''}; ` +
      `nothing was committed. Commit it: deskfuse vdi session commit ${s.id}, or discard it: deskfuse vdi session discard ${s.id}`;
  }
  if (o.kind === 'unchanged') return `VDI session ${s.id} committed: nothing differed from version ${s.base}, no new version`;
  if (o.kind === 'conflict') {
    return `VDI session ${s.id} committed as version ${o.version}, KEPT AS A CONFLICT (${o.reason === 'fencing' ? 'its lease was taken over' : `${o.ref} moved past ${s.base}`}): ${o.conflictRef}\n` +
      `  ${plural(o.chunksChanged, 'chunk')} changed; choose the line that continues (deskfuse desktop reset / ref set)`;
  }
  return `VDI session ${s.id} committed: version ${o.version} on ${o.ref} (parent ${s.base}, ${plural(o.chunksChanged, 'chunk')} changed, ${o.seconds} s)`;
}

function showText(s: VdiSession): string {
  const inc = s.increment;
  return `VDI session ${s.id}: desktop ${s.desktop} (${s.mode}), base ${s.image}@${s.base}, ${s.state}\n` +
    `  export      ${s.export}:SECRET\n` +
    `  server      ${s.server}${s.url ? ` (${s.url}:SECRET)` : ''}\n` +
    `  checkpoint  ${s.checkpointLayer ? `${fmtTime(s.checkpointAt, { seconds: true })} (what another server commits if ${s.server} dies)` : '-'}\n` +
    `  lease       ${s.fencing === null ? 'none (restore desktop)' : `${s.holder}, fencing ${s.fencing}`}\n` +
    `  clients     ${s.connections}; last connect ${fmtTime(s.lastConnectAt, { seconds: true })}; last disconnect ${s.lastDisconnect ? `${s.lastDisconnect} at ${fmtTime(s.lastDisconnectAt, { seconds: true })}` : '-'}\n` +
    (inc ? `  increment   ${plural(inc.changed, 'chunk')} changed${inc.live ? `; since the client connected: ${fmtBytes(inc.live.bytesWritten)} written, ${plural(inc.live.flushes, 'flush', 'flushes')}, last ${fmtTime(inc.live.lastFlushAt, { seconds: true })}` : ''}\n` : '') +
    `  auto-commit ${s.autoCommit ? 'on clean disconnect' : 'off'}\n` +
    `  outcome     ${s.outcome ? outcomeText(s) : '-'}\n` +
    (s.failure ? `  failure     ${outcomeText(s)}\n` : '') +
    `  created     ${fmtTime(s.createdAt)} by ${s.createdBy}\n`;
}
