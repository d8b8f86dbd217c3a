import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BOOTREQUEST, decodeDhcp, enc, encodeDhcp, FLAG_BROADCAST, MSG, OPT, type DecodedDhcp } from '../../src/dhcp/packet.js';
import { JsonLines, requireTool, stop, type Netns } from './netns.js';
import { ROOT } from './server.js';

const RUNNER = path.join(ROOT, 'test/helpers/dhcp-runner.mjs');
const PROBE = path.join(ROOT, 'test/helpers/dhcp-probe.mjs');
const LOAD = path.join(ROOT, 'test/helpers/dhcp-load.mjs');

/** The real clients the tests drive; fail (never skip) with the install command when one is missing. */
export function requireClients(): void {
  requireTool('busybox', ['udhcpc', '--help'], 'apt-get install busybox (or busybox-static)');
  requireTool('dhclient', ['--version'], 'apt-get install isc-dhcp-client');
  if (!existsSync(path.join(ROOT, 'dist/src/dhcp/server.js')) || !existsSync(path.join(ROOT, 'dist/native/deskfuse_native.node'))) {
    throw new Error('dist/ is not built: run `npm run build`');
  }
}

export interface Runner {
  events: JsonLines;
  stderr: () => string;
  close(): Promise<void>;
}

/** test/helpers/dhcp-runner.mjs in `ns`; resolves once it printed {"ready":true}. */
export async function startRunner(ns: Netns, cfg: Record<string, unknown>): Promise<Runner> {
  const proc = ns.spawn(process.execPath, [RUNNER, JSON.stringify(cfg)]);
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const events = new JsonLines(proc);
  const exited = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`runner exited ${code}: ${err}`))));
  await Promise.race([events.waitFor((o) => o.ready === true, 'runner ready'), exited]);
  exited.catch(() => {});
  return { events, stderr: () => err, close: () => stop(proc) };
}

export interface ProbeReply { msg: DecodedDhcp; from: string; port: number }

/**
 * Send crafted messages from `iface` in `ns` and collect replies until `untilCount` with `untilXid`.
 * Async on purpose: the runner's log pipe must keep draining while the probe runs.
 */
export async function probe(ns: Netns, cfg: { iface: string; port?: number; send?: { hex: string; to?: string; port?: number }[]; sendFile?: string; untilXid: number; untilCount?: number; timeoutMs?: number; repeatLastMs?: number }): Promise<{ arrived: boolean; replies: ProbeReply[] }> {
  const proc = ns.spawn(process.execPath, [PROBE, JSON.stringify(cfg)]);
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const status = await new Promise<number>((resolve) => proc.once('close', (code) => resolve(code ?? -1)));
  if (status !== 0 && status !== 2) throw new Error(`probe failed (${status}): ${stderr}`);
  const replies = stdout.trim().split('\n').filter(Boolean).map((l) => {
    const o = JSON.parse(l) as { hex: string; from: string; port: number };
    return { msg: decodeDhcp(Buffer.from(o.hex, 'hex')), from: o.from, port: o.port };
  });
  return { arrived: status === 0, replies };
}

export interface Msg { type: number; mac: string; xid: number; ciaddr?: string; options?: [number, Buffer][]; broadcast?: boolean }

/** A client message, hex-encoded for the probe. */
export function clientMsg(m: Msg): string {
  return encodeDhcp({
    op: BOOTREQUEST, htype: 1, hlen: 6, hops: 0, xid: m.xid, secs: 0, flags: m.broadcast === false ? 0 : FLAG_BROADCAST,
    ciaddr: m.ciaddr ?? '0.0.0.0', yiaddr: '0.0.0.0', siaddr: '0.0.0.0', giaddr: '0.0.0.0', chaddr: Buffer.from(m.mac.replaceAll(':', ''), 'hex'),
    sname: '', file: '', options: new Map<number, Buffer>([[OPT.MESSAGE_TYPE, enc.u8(m.type)], ...(m.options ?? [])]),
  }).toString('hex');
}

/** Options a PXE ROM sends (PXE spec §2.2, RFC 4578 §2). */
export function pxeOptions(arch: number, ipxe = false): [number, Buffer][] {
  return [
    [OPT.VENDOR_CLASS, enc.str(`PXEClient:Arch:${String(arch).padStart(5, '0')}:UNDI:002001`)],
    [OPT.CLIENT_ARCH, enc.u16(arch)], [OPT.CLIENT_NDI, Buffer.from([1, 2, 1])],
    [OPT.UUID, Buffer.concat([Buffer.from([0]), Buffer.alloc(16, 0x5a)])],
    ...(ipxe ? [[OPT.USER_CLASS, enc.str('iPXE')] as [number, Buffer]] : []),
  ];
}

export interface Percentiles { n: number; p50: number | null; p99: number | null; max: number | null }
/** What test/helpers/dhcp-load.mjs prints (see its header for the checks behind `problems`). */
export interface LoadSummary {
  mode: 'full' | 'proxy';
  macs: number;
  sent: { discover: number; request: number };
  /** MACs that got at least one OFFER / ACK. */
  answered: { offer: number; ack: number };
  /** Answers received in all. */
  replies: { offer: number; ack: number };
  retransmitted: number;
  duplicated: number;
  latencyMs: { offer: Percentiles; ack: Percentiles };
  addresses: number;
  problems: string[];
}

/** The DHCP load client in `ns` (N PXE clients from one process); resolves to its summary. */
export async function dhcpLoad(ns: Netns, cfg: Record<string, unknown>): Promise<LoadSummary> {
  const r = await ns.runAsync(process.execPath, [LOAD, JSON.stringify(cfg)]);
  if (r.status !== 0) throw new Error(`dhcp-load failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as LoadSummary;
}

export { MSG, OPT, enc };

const SCRIPT = `#!/bin/sh
# udhcpc event script for tests: record the event and what the server said; configure on bound/renew.
echo "$1 ip=$ip subnet=$subnet serverid=$serverid siaddr=$siaddr boot_file=$boot_file tftp=$tftp lease=$lease" >> "$DF_OUT"
case "$1" in bound|renew) [ -n "$DF_CONFIGURE" ] && ip addr replace "$ip/$subnet" dev "$interface" ;; esac
exit 0
`;

/** Write the udhcpc script into `dir`; returns its path. */
export function udhcpcScript(dir: string): string {
  const f = path.join(dir, 'udhcpc.sh');
  writeFileSync(f, SCRIPT);
  chmodSync(f, 0o755);
  return f;
}

/** Parse the recorded `event k=v …` lines. */
export function events(file: string): { event: string; [k: string]: string }[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => {
    const [event, ...kv] = l.split(' ');
    return { event: event!, ...Object.fromEntries(kv.map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)])) };
  });
}

/** One-shot busybox udhcpc (`-n -q`: exit after bound or failure). */
export async function udhcpcOnce(ns: Netns, iface: string, script: string, out: string, extra: string[] = []): Promise<number> {
  const r = await ns.runAsync('busybox', ['udhcpc', '-i', iface, '-n', '-q', '-t', '3', '-T', '1', '-A', '1', '-s', script, ...extra], { ...process.env, DF_OUT: out });
  return r.status;
}
