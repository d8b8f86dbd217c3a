// An isolated lab network for QEMU endpoints: one network namespace per lab, named df-e2e-<pid>-<n>,
// holding bridges (STP off, forward_delay 0, the server's address on the bridge) and tap devices
// enslaved to them. There is no veth to the host and no default route, so nothing inside — DHCP
// answers included — can reach a host interface; no host interface is ever touched.
//
//   namespace df-e2e-<pid>-<n>
//     lo (up)
//     br0 10.91.0.1/24 [fd00:df:0::1/64]  ── br0-tap0, br0-tap1, …   (QEMU -netdev tap,ifname=…)
//     br1 10.92.0.1/24 [fd00:df:1::1/64]  ── br1-tap0, …              (optional second bridge)
//
// Processes run inside with lab.exec / lab.spawn (`ip netns exec`, which execs the command, so the
// child's PID is the command's PID). close() stops what the lab spawned (by PID) and deletes the
// namespace; a process 'exit' hook does the same synchronously if a test run dies without close().
import { execFileSync, spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { rmSync } from 'node:fs';
import { execa } from 'execa';
import { keepLogsAlways, runDir } from './paths.js';

export interface BridgeSpec {
  name: string;
  /** IPv4 subnet in CIDR form, e.g. 10.92.0.0/24. */
  subnet?: string;
  /** The server's (bridge's) IPv4 address inside `subnet`. */
  ip?: string;
}

export interface LabOptions {
  /** Subnet of the first bridge (default 10.91.0.0/24). */
  subnet?: string;
  /** Address of the first bridge (default 10.91.0.1). */
  serverIp?: string;
  /** Bridge names or specs (default ['br0']). Bridge k>0 defaults to 10.(91+k).0.0/24, .1 on the bridge. */
  bridges?: (string | BridgeSpec)[];
  /** Tap devices per bridge (default 2). */
  taps?: number;
  /** Also put a ULA (fd00:df:<k>::1/64, nodad) on each bridge, for router advertisements. */
  ipv6Ula?: boolean;
  /** Name of the run directory under DESKFUSE_E2E_DIR (default: the namespace name). */
  run?: string;
}

export interface LabBridge {
  name: string;
  /** Server address on the bridge, e.g. 10.91.0.1. */
  ip: string;
  prefix: number;
  /** Network address in CIDR form, e.g. 10.91.0.0/24. */
  subnet: string;
  /** IPv6 ULA on the bridge (without prefix length), when ipv6Ula was set. */
  ip6?: string;
  taps: string[];
}

export interface ExecOptions {
  input?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** Kill the command after this many ms. */
  timeout?: number;
  /** Reject on a non-zero exit (default true). */
  reject?: boolean;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number | undefined;
}

export interface CloseOptions {
  /** Delete the lab's run directory (logs) too. Ignored when DESKFUSE_E2E_KEEP=1. Default false. */
  removeLogs?: boolean;
}

export interface Lab {
  /** The namespace name, df-e2e-<pid>-<n>. */
  readonly name: string;
  /** The run directory: ${DESKFUSE_E2E_DIR:-/tmp/deskfuse-e2e}/<run>. */
  readonly dir: string;
  readonly bridges: readonly LabBridge[];
  /** Runs a command to completion inside the namespace (execa; rejects on a non-zero exit). */
  exec(cmd: string, args?: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Starts a long-running command inside the namespace; the lab stops it on close() if still running. */
  spawn(cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** The tap device for endpoint `vmIndex` on `bridge` (default the first bridge). */
  tapFor(vmIndex: number, bridge?: string): string;
  /** A bridge by name (default the first). */
  bridge(name?: string): LabBridge;
  readonly closed: boolean;
  /** Stops the lab's processes (SIGTERM, SIGKILL after 3 s) and deletes the namespace. Idempotent. */
  close(opts?: CloseOptions): Promise<void>;
}

const NS_PREFIX = `df-e2e-${process.pid}-`;
let counter = 0;
const openLabs = new Set<LabImpl>();
let exitHookInstalled = false;

function parseIpv4(s: string, what: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m || m.slice(1).some((x) => Number(x) > 255)) throw new Error(`${what}: expected a dotted IPv4 address, received ${JSON.stringify(s)}`);
  return m.slice(1).reduce((a, x) => a * 256 + Number(x), 0);
}

function fmtIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

function resolveBridge(spec: string | BridgeSpec, k: number, opts: LabOptions, taps: number, ula: boolean): LabBridge {
  const b: BridgeSpec = typeof spec === 'string' ? { name: spec } : spec;
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,7}$/.test(b.name)) throw new Error(`bridges[${k}].name: expected [A-Za-z][A-Za-z0-9_-]{0,7}, received ${JSON.stringify(b.name)}`);
  const subnet = b.subnet ?? (k === 0 ? opts.subnet : undefined) ?? `10.${91 + k}.0.0/24`;
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(subnet);
  if (!m || Number(m[2]) < 8 || Number(m[2]) > 30) throw new Error(`bridges[${k}].subnet: expected a.b.c.d/8..30, received ${JSON.stringify(subnet)}`);
  const prefix = Number(m[2]);
  const size = 2 ** (32 - prefix);
  const net = parseIpv4(m[1]!, `bridges[${k}].subnet`);
  const base = net - (net % size);
  const ip = b.ip ?? (k === 0 ? opts.serverIp : undefined) ?? fmtIpv4(base + 1);
  const ipN = parseIpv4(ip, `bridges[${k}].ip`);
  if (ipN <= base || ipN >= base + size - 1) throw new Error(`bridges[${k}].ip: ${ip} is not a host address in ${subnet}`);
  return {
    name: b.name,
    ip,
    prefix,
    subnet: `${fmtIpv4(base)}/${prefix}`,
    ...(ula ? { ip6: `fd00:df:${k}::1` } : {}),
    taps: Array.from({ length: taps }, (_, i) => `${b.name}-tap${i}`),
  };
}

function listNamespaces(): string[] {
  const out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return out.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter(Boolean);
}

const isRunning = (c: ChildProcess): boolean => c.exitCode === null && c.signalCode === null;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous last resort when a test run ends without close(): only PIDs this process spawned
  // and that have not exited, and only namespaces this process created.
  process.on('exit', () => {
    for (const lab of openLabs) lab.closeSync();
  });
}

class LabImpl implements Lab {
  readonly children = new Set<ChildProcess>();
  closed = false;
  private closing: Promise<void> | null = null;

  constructor(
    readonly name: string,
    readonly dir: string,
    readonly bridges: readonly LabBridge[],
  ) {}

  async exec(cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.closed) throw new Error(`lab ${this.name} is closed`);
    const sub = execa('ip', ['netns', 'exec', this.name, cmd, ...args], { ...opts, encoding: 'utf8', stripFinalNewline: true });
    const cp = sub.nodeChildProcess; // execa 10: the subprocess is a promise; its ChildProcess is here
    this.children.add(cp);
    cp.once('exit', () => this.children.delete(cp));
    const r = await sub;
    return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode };
  }

  spawn(cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    if (this.closed) throw new Error(`lab ${this.name} is closed`);
    const cp = nodeSpawn('ip', ['netns', 'exec', this.name, cmd, ...args], opts);
    this.children.add(cp);
    cp.once('exit', () => this.children.delete(cp));
    return cp;
  }

  bridge(name?: string): LabBridge {
    const b = name === undefined ? this.bridges[0] : this.bridges.find((x) => x.name === name);
    if (!b) throw new Error(`lab ${this.name}: no bridge ${JSON.stringify(name)} (have ${this.bridges.map((x) => x.name).join(', ')})`);
    return b;
  }

  tapFor(vmIndex: number, bridge?: string): string {
    const b = this.bridge(bridge);
    const tap = b.taps[vmIndex];
    if (tap === undefined) throw new Error(`lab ${this.name}: bridge ${b.name} has ${b.taps.length} taps, no tap for endpoint ${vmIndex}`);
    return tap;
  }

  close(opts: CloseOptions = {}): Promise<void> {
    this.closing ??= this.doClose(opts);
    return this.closing;
  }

  private async doClose(opts: CloseOptions): Promise<void> {
    this.closed = true;
    const waitExit = (c: ChildProcess, ms: number) =>
      new Promise<void>((resolve) => {
        if (!isRunning(c)) return resolve();
        const timer = setTimeout(resolve, ms);
        c.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    const live = [...this.children].filter(isRunning);
    for (const c of live) c.kill('SIGTERM');
    await Promise.all(live.map((c) => waitExit(c, 3000)));
    const stubborn = live.filter(isRunning);
    for (const c of stubborn) c.kill('SIGKILL');
    await Promise.all(stubborn.map((c) => waitExit(c, 3000)));
    // Anything else still in the namespace was not started by the lab: report it, do not kill it.
    let leftovers = '';
    try {
      leftovers = (await execa('ip', ['netns', 'pids', this.name])).stdout.trim();
    } catch {
      /* namespace already gone */
    }
    await execa('ip', ['netns', 'del', this.name], { reject: false });
    openLabs.delete(this);
    if (opts.removeLogs && !keepLogsAlways()) rmSync(this.dir, { recursive: true, force: true });
    if (leftovers) throw new Error(`lab ${this.name}: processes the lab did not start were still in the namespace: ${leftovers.split('\n').join(' ')}`);
  }

  /** Synchronous cleanup for the process 'exit' hook. */
  closeSync(): void {
    if (this.closed && !openLabs.has(this)) return;
    this.closed = true;
    for (const c of this.children) {
      if (isRunning(c) && c.pid !== undefined) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    try {
      execFileSync('ip', ['netns', 'del', this.name], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
    openLabs.delete(this);
  }
}

/** Creates a fresh namespace df-e2e-<pid>-<n> with bridges and taps (see the file header). Root only. */
export async function createLab(opts: LabOptions = {}): Promise<Lab> {
  const taps = opts.taps ?? 2;
  if (!Number.isInteger(taps) || taps < 0 || taps > 64) throw new Error(`taps: expected an integer 0..64, received ${taps}`);
  const specs = opts.bridges ?? ['br0'];
  if (specs.length === 0) throw new Error('bridges: expected at least one bridge');
  const bridges = specs.map((s, k) => resolveBridge(s, k, opts, taps, opts.ipv6Ula ?? false));
  if (new Set(bridges.map((b) => b.name)).size !== bridges.length) throw new Error('bridges: names must be unique');

  const name = `${NS_PREFIX}${counter++}`;
  // Never reuse a namespace: `ip netns add` would also fail on an existing name, but say why first.
  if (listNamespaces().includes(name)) throw new Error(`network namespace ${name} exists already; refusing to reuse it`);
  await execa('ip', ['netns', 'add', name]);
  installExitHook();
  const lab = new LabImpl(name, runDir(opts.run ?? name), bridges);
  openLabs.add(lab);
  const batch = ['link set lo up'];
  for (const b of bridges) {
    batch.push(`link add ${b.name} type bridge stp_state 0 forward_delay 0`);
    batch.push(`addr add ${b.ip}/${b.prefix} dev ${b.name}`);
    if (b.ip6) batch.push(`addr add ${b.ip6}/64 dev ${b.name} nodad`);
    batch.push(`link set ${b.name} up`);
    for (const t of b.taps) batch.push(`tuntap add dev ${t} mode tap`, `link set ${t} master ${b.name} up`);
  }
  try {
    await execa('ip', ['-n', name, '-batch', '-'], { input: batch.join('\n') + '\n' });
  } catch (err) {
    await lab.close();
    throw new Error(`lab ${name}: network set-up failed`, { cause: err });
  }
  return lab;
}
