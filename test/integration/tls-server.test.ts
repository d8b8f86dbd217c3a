import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, CLI, freePort, tempDir } from '../helpers/server.js';

/**
 * `deskfuse server --tls on` as a process (what `npm start -- --tls on` runs): the first start makes
 * the private CA and prints its fingerprint once with how to pin it; a restart keeps the CA (same
 * fingerprint, printed no more); an HTTPS port in use is DF_ERR_LISTEN naming --https-listen.
 */
describe('deskfuse server --tls on', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeAll(() => {
    tmp = tempDir('df-tlssrv-');
  });
  afterAll(() => tmp?.cleanup());

  /** Starts the server, waits until it is ready (every message printed, signals handled) and HTTPS answers (curl --cacert), stops it; returns its output. */
  const runOnce = (data: string, port: number, httpsPort: number) => startStop(data, port, httpsPort);
  const startStop = async (data: string, port: number, httpsPort: number): Promise<string> => {
    const proc = spawn(process.execPath, [CLI, 'server', '--data', data, '--listen', `127.0.0.1:${port}`, '--https-listen', `127.0.0.1:${httpsPort}`, '--tls', 'on', '--nbd-listen', 'off', '--log-level', 'debug', '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    proc.stderr.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const exited = new Promise((r) => proc.once('close', r)); // after its output is read to the end
    try {
      for (let i = 0; i < 150; i++) {
        if (out.includes('"deskfuse server ready"') && existsSync(path.join(data, 'tls', 'ca.crt')) && (await execa('curl', ['-sS', '--cacert', path.join(data, 'tls', 'ca.crt'), `https://127.0.0.1:${httpsPort}/healthz`], { reject: false })).exitCode === 0) break;
        if (proc.exitCode !== null) throw new Error(`server exited: ${out}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      proc.kill('SIGTERM');
      await exited;
    }
    expect(out).toContain('"stopping"');
    return out;
  };

  it('prints the CA fingerprint once, keeps the CA across restarts', async () => {
    const data = path.join(tmp.dir, 'data');
    const [port, httpsPort] = [await freePort(), await freePort()];
    const first = await runOnce(data, port, httpsPort);
    const fp = readFileSync(path.join(data, 'tls', 'ca.fingerprint'), 'utf8').trim();
    expect(fp).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(first).toContain(`HTTPS on https://127.0.0.1:${httpsPort} with a private CA`);
    expect(first.split(fp).length - 1).toBeGreaterThanOrEqual(2); // the fingerprint, and the command that pins it
    expect(first).toContain(`--ca-fingerprint ${fp}`);
    expect(first).toContain('Admin token (shown once');

    const second = await runOnce(data, port, httpsPort);
    expect(second).not.toContain('private CA');
    expect(second).not.toContain('--ca-fingerprint'); // (its log line names the fingerprint at every start)
    expect(readFileSync(path.join(data, 'tls', 'ca.fingerprint'), 'utf8').trim()).toBe(fp);
  });

  it('an HTTPS port in use is DF_ERR_LISTEN naming --https-listen, and creates nothing', async () => {
    const port = await freePort();
    const data = path.join(tmp.dir, 'busy');
    const squat = spawn(process.execPath, ['-e', `require('net').createServer().listen(0,'127.0.0.1',function(){console.log(this.address().port)})`], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const busy = await new Promise<number>((r) => squat.stdout.setEncoding('utf8').once('data', (d: string) => r(Number(d.trim()))));
      const r = await cli(['server', '--data', data, '--listen', `127.0.0.1:${port}`, '--https-listen', `127.0.0.1:${busy}`, '--tls', 'on', '--nbd-listen', 'off', '--log-level', 'silent']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`HTTPS cannot listen on 127.0.0.1:${busy}`);
      expect(r.stderr).toContain('--https-listen');
      expect(existsSync(data)).toBe(false);
    } finally {
      squat.kill();
    }
  });
});
