// The deskfuse appliance inside a lab namespace: our DHCP (full or proxy) + TFTP + HTTP on the lab's
// bridge, no dnsmasq. The CLI runs inside the namespace too (the server listens on the bridge only).
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { Lab } from './harness/netns.js';

/** The package root, from test/e2e or from its compiled copy in dist/test/e2e (npm run demo). */
export const ROOT = (() => {
  for (let d = import.meta.dirname; d !== path.dirname(d); d = path.dirname(d)) {
    if (existsSync(path.join(d, 'package.json')) && existsSync(path.join(d, 'initramfs/build.sh'))) return d;
  }
  throw new Error(`no deskfuse package root above ${import.meta.dirname}`);
})();

export const CLI = path.join(ROOT, 'dist/cli/main.js');

export interface LabAppliance {
  url: string;
  token: string;
  dataDir: string;
  log: string;
  proc: ChildProcess;
  /** Runs the deskfuse CLI against this server (inside the namespace); --json output parsed. */
  cli<T = unknown>(args: string[]): Promise<T>;
  stop(): Promise<void>;
}

export interface LabApplianceOptions {
  dhcp: 'full' | 'proxy' | 'off';
  bridge?: string;
  range?: [string, string];
  autoEnrol?: string;
  retrySeconds?: number;
  name?: string;
  /** More keys of the config file's netboot block (e.g. secureBoot). */
  netboot?: Record<string, unknown>;
}

export async function startLabAppliance(lab: Lab, o: LabApplianceOptions): Promise<LabAppliance> {
  const br = lab.bridge(o.bridge);
  const name = o.name ?? 'server';
  const dataDir = path.join(lab.dir, `${name}-data`);
  const log = path.join(lab.dir, `${name}.log`);
  const cfg = path.join(lab.dir, `${name}.json`);
  writeFileSync(cfg, JSON.stringify({ netboot: { retrySeconds: o.retrySeconds ?? 2, ...o.netboot } }));
  const url = `http://${br.ip}:8080`;
  const args = [CLI, 'server', '--data', dataDir, '--listen', `${br.ip}:8080`, '--config', cfg, '--log-level', 'info', '--nbd-listen', 'off', '--dhcp', o.dhcp,
    // Plain HTTP, as these scenarios were written (the lab's CLI calls the bridge address with a token):
    // the boot stage over HTTPS is covered by test/integration/tls-boot-agent.test.ts.
    '--tls', 'off'];
  if (o.dhcp !== 'off') args.push('--interface', br.name);
  if (o.range) args.push('--dhcp-range', o.range.join(','));
  if (o.autoEnrol) args.push('--auto-enrol', o.autoEnrol);
  const fd = openSync(log, 'a');
  const proc = lab.spawn(process.execPath, args, { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = await lab.exec('curl', ['-sf', '-m', '2', `${url}/healthz`], { reject: false });
    if (r.exitCode === 0) break;
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`the lab server did not start (exit ${proc.exitCode}); log ${log}:\n${readFileSync(log, 'utf8').slice(-3000)}`);
    await new Promise((r2) => setTimeout(r2, 300));
  }
  const token = readFileSync(path.join(dataDir, 'admin.token'), 'utf8').trim();
  return {
    url, token, dataDir, log, proc,
    async cli<T>(a: string[]): Promise<T> {
      const r = await lab.exec(process.execPath, [CLI, ...a, '--json'], { env: { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: token }, reject: false });
      if (r.exitCode !== 0) throw new Error(`deskfuse ${a.join(' ')}: exit ${r.exitCode}: ${String(r.stderr)}${String(r.stdout)}`);
      return JSON.parse(String(r.stdout)) as T;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
    },
  };
}
