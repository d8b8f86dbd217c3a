import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { areaSize } from '../../src/agent/state-area.js';
import { keyIdOf, newSigningKey, rawPublicKey } from '../../src/sign/ed25519.js';
import { signStatement, type StatementBody } from '../../src/sign/statements.js';
import { makeDisk, prng, sha256 } from '../helpers/disk.js';
import { startProxy, type TestProxy } from '../helpers/proxy.js';
import { cli, ROOT, startInProcess, tempDir } from '../helpers/server.js';

const MAC = '52:54:00:aa:bb:15';
const AGENT = path.join(ROOT, 'dist/initramfs/agent/main.js');
const SIZE = 4 * 1024 * 1024;

/**
 * Issue 15 in the boot stage's own program (on this host, against a disk file): it trusts the keys
 * of its trust file on a blank disk; a forged answer is refused with its code, reported as an
 * `error` boot event, and the disk keeps every byte (the program then exits 1: /init boots the disk
 * as it is); once the disk recorded its keys, a boot stage bringing another key changes nothing.
 */
describe('boot-stage agent: signed versions', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let proxy: TestProxy;
  let disk: string;
  let env: Record<string, string>;
  const f = (n: string) => path.join(tmp.dir, n);
  /** The server's clock, moved past the wait after a failed boot (src/endpoint/decide.ts FAILURE_BACKOFF_MS). */
  let aheadMs = 0;

  beforeAll(async () => {
    tmp = tempDir('df-bootsig-');
    srv = await startInProcess(f('data'), { now: () => new Date(Date.now() + aheadMs) });
    proxy = await startProxy(srv.url);
    env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    makeDisk(f('v1.img'), SIZE, [{ at: 0, data: prng(5)(SIZE) }]);
    makeDisk(f('v2.img'), SIZE, [{ at: 0, data: prng(6)(SIZE) }]);
    expect((await cli(['image', 'create', 'os', '--from', f('v1.img')], env)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'kiosk', '--image', 'os', '--mode', 'restore'], env)).code).toBe(0);
    expect((await cli(['endpoint', 'add', MAC, '--desktop', 'kiosk', '--name', 'lab-sig'], env)).code).toBe(0);
    expect((await cli(['key', 'show', '--trust-out', f('trust.json')], env)).code).toBe(0);
    const stranger = rawPublicKey(newSigningKey());
    writeFileSync(f('stranger.json'), JSON.stringify({ version: 1, keys: [{ id: keyIdOf(stranger), ed25519: stranger.toString('base64') }] }));
    disk = f('endpoint.disk');
    makeDisk(disk, SIZE + areaSize({ virtualSize: SIZE, chunkSize: 64 * 1024 }) + 1024 * 1024, []);
  });
  afterAll(async () => {
    await proxy?.close();
    await srv?.close();
    tmp?.cleanup();
  });

  /** One boot: a fresh token from the boot script, the program run with `trust` as its trust file. */
  const boot = async (server: string, trust: string) => {
    const script = (await srv.appliance.app.inject({ method: 'GET', url: `/boot/ipxe?mac=${MAC}&platform=pcbios` })).payload;
    const token = /deskfuse\.token=(\S+)/.exec(script)?.[1];
    if (!token) throw new Error(`no agent boot: ${script}`);
    return execa(process.execPath, [AGENT], {
      reject: false, timeout: 60_000,
      env: {
        DESKFUSE_CMDLINE: `console=ttyS0 deskfuse.server=${server} deskfuse.token=${token} deskfuse.mac=${MAC} deskfuse.action=sync deskfuse.disk=${disk}`,
        DESKFUSE_SESSION_FILE: f(`session-${token}.json`), DESKFUSE_BOOT_STAGE: '', DESKFUSE_TRUST_FILE: trust,
      },
    });
  };
  const events = async () => ((await srv.appliance.app.inject({ method: 'GET', url: `/api/v1/endpoints/${MAC}`, headers: { authorization: `Bearer ${srv.token}` } })).json().events as Array<{ seq: number; phase: string; detail: Record<string, unknown> }>)
    .sort((a, b) => a.seq - b.seq);

  it('a blank disk trusts its trust file; a forged answer is refused, reported, and the disk kept; the disk\'s keys then outrank the boot stage\'s', async () => {
    const keyId = JSON.parse((await cli(['key', 'show', '--json'], env)).stdout).keyId as string;
    const first = await boot(srv.url, f('trust.json'));
    expect(first.stdout).toMatch(new RegExp(`@@MARK TRUST uptime=\\S+ keys=${keyId}\\n`));
    expect(first.stdout).toMatch(/@@MARK SYNCED .*version=1 /);

    expect((await cli(['image', 'publish', 'os', '--from', f('v2.img')], env)).code).toBe(0);
    const other = newSigningKey();
    const otherId = keyIdOf(rawPublicKey(other));
    proxy.hooks.onResponse = ({ url }, body) => {
      if (!/\/signed-head/.test(url)) return undefined;
      const a = JSON.parse(body.toString());
      for (const k of ['head', 'manifest'] as const) a[k] = signStatement(other, otherId, JSON.parse(a[k].body) as StatementBody);
      return { body: Buffer.from(JSON.stringify(a)) };
    };
    const before = sha256(disk);
    const forged = await boot(proxy.url, f('trust.json'));
    expect(forged.exitCode).toBe(1);
    expect(forged.stdout).toMatch(/@@MARK AGENT-ERROR uptime=\S+ "DF_ERR_SIG_UNKNOWN_KEY: /);
    expect(forged.stdout).not.toContain('@@MARK SYNCED');
    expect(sha256(disk)).toBe(before);
    const err = (await events()).filter((e) => e.phase === 'error').at(-1)!;
    expect(err.detail).toMatchObject({ action: 'sync', code: 'DF_ERR_SIG_UNKNOWN_KEY' });

    // The server then lets the endpoint boot its disk as it is, rather than loop through the boot stage.
    const next = (await srv.appliance.app.inject({ method: 'GET', url: `/boot/ipxe?mac=${MAC}&platform=pcbios` })).payload;
    expect(next).toContain('the last boot-time sync failed (DF_ERR_SIG_UNKNOWN_KEY');
    expect(next).toContain('sanboot --no-describe --drive 0x80');

    // A boot stage that brings a stranger's key: the disk's recorded key decides, and the honest server is followed.
    proxy.hooks.onResponse = undefined;
    aheadMs = 11 * 60_000;
    const honest = await boot(srv.url, f('stranger.json'));
    expect(honest.stdout).toMatch(/@@MARK SYNCED .*version=2 /);
  });
});
