import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The commit-at-shutdown hook against a local HTTP server, with the host's tools (curl) and with busybox
// alone (wget), as on the test OS. DESKFUSE_REBOOT_CMD stands in for the reboot.
const SCRIPT = path.resolve(import.meta.dirname, 'deskfuse-commit-at-shutdown.sh');
const MAC = '52:54:00:0d:f0:99';
let srv: Server;
let url: string;
let answer: string | null; // null = never answer
const bodies: string[] = [];
let bbDir: string;

beforeAll(async () => {
  srv = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/boot/commit-request') return void res.writeHead(404).end();
      bodies.push(body);
      if (answer !== null) res.writeHead(200, { 'content-type': 'application/json' }).end(answer);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  // a PATH with busybox applets only
  bbDir = mkdtempSync(path.join(tmpdir(), 'df-bb-'));
  for (const a of ['sh', 'sed', 'tr', 'tail', 'head', 'cat', 'wget', 'timeout', 'ip', 'grep']) symlinkSync('/bin/busybox', path.join(bbDir, a));
});
afterAll(async () => {
  srv.closeAllConnections();
  await new Promise((r) => srv.close(r));
  rmSync(bbDir, { recursive: true, force: true });
});

function hook(server: string, busyboxOnly: boolean): Promise<{ code: number | null; out: string; seconds: number }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const env = { PATH: busyboxOnly ? bbDir : process.env.PATH!, DESKFUSE_MAC: MAC, DESKFUSE_REBOOT_CMD: 'echo REBOOT-REQUESTED', DESKFUSE_CONF: '/nonexistent' };
    const p = spawn(busyboxOnly ? path.join(bbDir, 'sh') : 'sh', [SCRIPT, server], { env });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('exit', (code) => resolve({ code, out, seconds: (performance.now() - t0) / 1000 }));
  });
}

describe.each([['curl', false], ['busybox wget', true]] as const)('commit-at-shutdown hook (%s)', (_name, bb) => {
  it('reboots when the server asks for a commit', async () => {
    answer = '{"action":"commit-poweroff"}';
    bodies.length = 0;
    const r = await hook(url, bb);
    expect(r.out).toContain('REBOOT-REQUESTED');
    expect(r.code).toBe(2); // the stand-in reboot command returned
    expect(bodies).toEqual([`mac=${MAC}`]);
  });

  it('lets the power-off go on when no commit is needed', async () => {
    answer = '{"action":"none"}';
    const r = await hook(url, bb);
    expect(r.code).toBe(0);
    expect(r.out).not.toContain('REBOOT-REQUESTED');
    expect(r.out).toContain('no commit needed');
  });

  it('asks several servers (comma-separated) in turn until one answers', async () => {
    answer = '{"action":"commit-poweroff"}';
    bodies.length = 0;
    const r = await hook(`http://127.0.0.1:9,${url}`, bb);
    expect(r.out).toContain('REBOOT-REQUESTED');
    expect(bodies).toEqual([`mac=${MAC}`]);
  });

  it('gives up within ~5 s when the server does not answer, or is not there', async () => {
    answer = null;
    const hung = await hook(url, bb);
    expect(hung.code).toBe(0);
    expect(hung.seconds).toBeLessThan(7);
    const gone = await hook('http://127.0.0.1:9', bb);
    expect(gone.code).toBe(0);
    expect(gone.out).toContain('not reachable');
  }, 20_000);
});
