import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * Network namespaces for tests, named `df-<tag>-<pid>-<n>` so parallel runs never collide; only
 * what a test created is deleted. Nothing touches the host's interfaces.
 */
let counter = 0;

export function requireTool(cmd: string, args: string[], install: string): void {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  if (r.error || r.status === 127) throw new Error(`${cmd} is missing: ${install}`);
}

export class Netns {
  readonly name: string;
  constructor(tag: string) {
    this.name = `df-${tag}-${process.pid}-${counter++}`;
    sh('ip', ['netns', 'add', this.name]);
    this.run('ip', ['link', 'set', 'lo', 'up']);
  }

  /** Run to completion; throws with stderr on failure unless `allowFail`. */
  run(cmd: string, args: string[], allowFail = false): { status: number; stdout: string; stderr: string } {
    return sh('ip', ['netns', 'exec', this.name, cmd, ...args], allowFail);
  }

  /** Start a long-running process in the namespace (`ip netns exec` execs, so pid is the process). */
  spawn(cmd: string, args: string[]): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** As run, but without blocking this process (so pipes from our other children keep draining). */
  async runAsync(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ status: number; stdout: string; stderr: string }> {
    const proc = spawn('ip', ['netns', 'exec', this.name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const status = await new Promise<number>((resolve) => proc.once('close', (code) => resolve(code ?? -1)));
    return { status, stdout, stderr };
  }

  delete(): void {
    sh('ip', ['netns', 'del', this.name], true);
  }
}

export function sh(cmd: string, args: string[], allowFail = false): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  const res = { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  if (!allowFail && res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${res.status}): ${res.stderr}`);
  return res;
}

/** A bridge in `server` with an address, and a veth into `client` (named `ifname` there). */
export function bridge(server: Netns, br: string, cidr: string): void {
  server.run('ip', ['link', 'add', br, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
  server.run('sysctl', ['-q', '-w', `net.ipv6.conf.${br}.accept_dad=0`]);
  server.run('ip', ['addr', 'add', cidr, 'dev', br]);
  server.run('ip', ['link', 'set', br, 'up']);
}

export function plug(server: Netns, br: string, client: Netns, ifname: string, mac?: string): void {
  const peer = `v${counter++}`;
  server.run('ip', ['link', 'add', peer, 'type', 'veth', 'peer', 'name', ifname, 'netns', client.name]);
  server.run('ip', ['link', 'set', peer, 'master', br, 'up']);
  if (mac) client.run('ip', ['link', 'set', ifname, 'address', mac]);
  client.run('sysctl', ['-q', '-w', `net.ipv6.conf.${ifname}.accept_dad=0`]);
  client.run('ip', ['link', 'set', ifname, 'up']);
}

/** Lines of a child's stdout as parsed JSON, with a wait-for helper. */
export class JsonLines {
  readonly lines: Record<string, unknown>[] = [];
  private waiters: { pred: (o: Record<string, unknown>) => boolean; resolve: (o: Record<string, unknown>) => void }[] = [];
  constructor(proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(l) as Record<string, unknown>;
      } catch {
        return;
      }
      this.lines.push(o);
      this.waiters = this.waiters.filter((w) => (w.pred(o) ? (w.resolve(o), false) : true));
    });
  }
  waitFor(pred: (o: Record<string, unknown>) => boolean, what: string, ms = 20_000): Promise<Record<string, unknown>> {
    const hit = this.lines.find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting for ${what}; saw ${JSON.stringify(this.lines)}`)), ms);
      this.waiters.push({ pred, resolve: (o) => (clearTimeout(t), resolve(o)) });
    });
  }
}

/** Stop a child we started, by its pid, and wait for it. */
export async function stop(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const done = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill(signal);
  const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}
