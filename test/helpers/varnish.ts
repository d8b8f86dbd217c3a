import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, freePort } from './server.js';

export const VCL = path.join(ROOT, 'deploy/varnish/deskfuse.vcl');

export interface Varnish {
  url: string;
  pid: number;
  /** varnishstat counters (MAIN.cache_hit, MAIN.backend_req, …). */
  stat(): Record<string, number>;
  stop(): Promise<void>;
}

/** Fails with the install command when Debian's varnish is missing (scripts/setup-deps.sh installs it). */
export function requireVarnish(): void {
  if (spawnSync('varnishd', ['-V']).status !== 0) throw new Error('varnishd is missing: run `bash scripts/setup-deps.sh` (or apt-get install -y varnish)');
}

/**
 * Debian's varnishd with the repo's VCL, in the foreground as our child (stopped by its PID), its
 * working dir and backend include under `dir`, listening on a free loopback port.
 */
export async function startVarnish(dir: string, backend: { host: string; port: number }): Promise<Varnish> {
  requireVarnish();
  // varnishd compiles the VCL as its own unprivileged user: the include must be readable by it.
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  for (let d = path.dirname(dir); d !== path.dirname(d) && d.startsWith('/tmp/'); d = path.dirname(d)) chmodSync(d, 0o755);
  writeFileSync(path.join(dir, 'deskfuse-backend.vcl'), `backend default { .host = "${backend.host}"; .port = "${backend.port}"; .first_byte_timeout = 120s; }\n`, { mode: 0o644 });
  const port = await freePort();
  const work = path.join(dir, 'n');
  const proc: ChildProcess = spawn('varnishd', [
    '-F', '-n', work, '-a', `127.0.0.1:${port}`, '-T', 'none', '-f', VCL, '-s', 'malloc,256m',
    '-p', `vcl_path=${dir}:/usr/share/varnish/vcl`,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  for (const s of [proc.stdout, proc.stderr]) s?.on('data', (d: Buffer) => out.push(d.toString()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const done = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await done;
  };
  for (let i = 0; i < 100; i++) {
    if (proc.exitCode !== null) throw new Error(`varnishd exited with ${proc.exitCode}: ${out.join('').slice(-2000)}`);
    try {
      await fetch(`${url}/healthz`);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
    if (i === 99) {
      await stop();
      throw new Error(`varnishd did not answer on ${url}: ${out.join('').slice(-2000)}`);
    }
  }
  return {
    url, pid: proc.pid!, stop,
    stat: () => {
      const r = spawnSync('varnishstat', ['-n', work, '-1', '-j'], { encoding: 'utf8' });
      const j = JSON.parse(r.stdout) as { counters?: Record<string, { value: number }> } & Record<string, { value?: number }>;
      const c = j.counters ?? j;
      return Object.fromEntries(Object.entries(c).filter(([, v]) => typeof v?.value === 'number').map(([k, v]) => [k, v.value as number]));
    },
  };
}
