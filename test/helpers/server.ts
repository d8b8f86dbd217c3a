import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { loadServerConfig } from '../../src/config/server.js';
import { closeHttps, listenHttps } from '../../server/tls.js';
import type { Server as HttpsServer } from 'node:https';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const CLI = path.join(ROOT, 'dist/cli/main.js');

export function tempDir(prefix = 'df-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * An appliance in this process, listening on a free loopback port. `tls: true`: TLS on (a private CA
 * in <data>/tls), HTTPS on another free loopback port as well (`httpsUrl`), as `deskfuse server --tls on`.
 */
export async function startInProcess(dataDir: string, opts: { now?: () => Date; bootDir?: string; tls?: boolean } = {}): Promise<{ appliance: Appliance; url: string; httpsUrl?: string; token: string; close: () => Promise<void> }> {
  const { bootDir, tls, ...rest } = opts;
  const appliance = await openAppliance(loadServerConfig({ flags: { data: dataDir, listen: '127.0.0.1:0', logLevel: 'silent', ...(bootDir ? { bootDir } : {}), tls: tls ? 'on' : 'off', httpsListen: '127.0.0.1:0' } }), undefined, rest);
  const url = await appliance.app.listen({ host: '127.0.0.1', port: 0 });
  let https: HttpsServer | undefined;
  let httpsUrl: string | undefined;
  if (appliance.tls) {
    https = await listenHttps(appliance.app, appliance.tls, '127.0.0.1', 0);
    appliance.ctx.tls!.port = (https.address() as { port: number }).port;
    httpsUrl = `https://127.0.0.1:${appliance.ctx.tls!.port}`;
  }
  const token = readFileSync(path.join(dataDir, 'admin.token'), 'utf8').trim();
  return {
    appliance, url, ...(httpsUrl ? { httpsUrl } : {}), token,
    close: async () => {
      if (https) await closeHttps(https);
      await appliance.close();
    },
  };
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** `deskfuse server` as a child process (for kill -9 tests). */
export async function startProcess(dataDir: string, port?: number, nbdPort?: number, extra: { args?: string[]; env?: Record<string, string> } = {}): Promise<{ proc: ChildProcess; url: string; token: string; port: number }> {
  const p = port ?? (await freePort());
  // NBD only where a test asks for it: parallel test files must not all bind the default port 10809.
  const nbd = nbdPort === undefined ? 'off' : `127.0.0.1:${nbdPort}`;
  const proc = spawn(process.execPath, [CLI, 'server', '--data', dataDir, '--listen', `127.0.0.1:${p}`, '--log-level', 'warn', '--nbd-listen', nbd, ...(extra.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'], ...(extra.env ? { env: { ...process.env, ...extra.env } } : {}),
  });
  // Drain the server's output (a full pipe would block its logger, and with it the server), keeping a tail to read on failure.
  const tail: string[] = [];
  for (const stream of [proc.stdout, proc.stderr]) {
    stream?.setEncoding('utf8');
    stream?.on('data', (d: string) => {
      tail.push(d);
      if (tail.length > 200) tail.shift();
      if (process.env.DESKFUSE_TEST_SERVER_LOG) process.stderr.write(d);
    });
  }
  const url = `http://127.0.0.1:${p}`;
  try {
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      try {
        up = (await fetch(`${url}/healthz`)).ok;
      } catch {
        /* not up yet */
      }
      if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}: ${tail.join('').slice(-2000)}`);
      if (!up) await new Promise((r) => setTimeout(r, 100));
    }
    const token = readFileSync(path.join(dataDir, 'admin.token'), 'utf8').trim();
    return { proc, url, token, port: p };
  } catch (err) {
    proc.kill('SIGKILL'); // a server that never came up is not left behind
    throw err;
  }
}

export async function stopProcess(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const done = new Promise((r) => proc.once('exit', r));
  proc.kill(signal);
  await done;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  json: any;
}

/** Run the built CLI. */
export async function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const r = await execa(process.execPath, [CLI, ...args], { env: { DESKFUSE_DATA: '/nonexistent', ...env }, reject: false });
  let json: unknown;
  try {
    json = JSON.parse(r.stdout.trim().split('\n').pop() ?? '');
  } catch {
    json = undefined;
  }
  return { code: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr, json };
}
