import { closeSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDisk } from '../../src/agent/disk.js';
import { areaSize, areaStart, readState } from '../../src/agent/state-area.js';
import { endpointKey, newEndpointSecret, proveEndpoint } from '../../src/endpoint/proof.js';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, ROOT, startInProcess, tempDir } from '../helpers/server.js';

const AGENT = path.join(ROOT, 'dist/initramfs/agent/main.js');
const SIZE = 4 * 1024 * 1024;
const GEOMETRY = { virtualSize: SIZE, chunkSize: 64 * 1024 };
const DISK_SIZE = SIZE + areaSize(GEOMETRY) + 1024 * 1024;
const A = { mac: '52:54:00:5e:c0:01', name: 'pc-a', desktop: 'alice' };
const B = { mac: '52:54:00:5e:c0:02', name: 'pc-b', desktop: 'bob' };
const C = { mac: '52:54:00:5e:c0:03', name: 'pc-c', desktop: 'carol' };

/**
 * An enrolled endpoint is bound to its disk: the first provisioning leaves an endpoint secret in the
 * disk's state area and the server keeps its public key; every later boot signs its one-time boot
 * token with it. Knowing the MAC yields a boot token and nothing more; a disk that lost the secret
 * waits for `deskfuse endpoint reprovision`. The boot-stage agent program runs here against disk files.
 */
describe('endpoint secret: a boot proves it holds the disk', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let app: FastifyInstance;
  let env: Record<string, string>;
  let runs = 0;
  let firstSecretOfC: Buffer | undefined;
  const disk = (ep: { name: string }) => path.join(tmp.dir, `${ep.name}.disk`);

  beforeAll(async () => {
    tmp = tempDir('df-secret-');
    srv = await startInProcess(path.join(tmp.dir, 'data'));
    app = srv.appliance.app;
    env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    const img = path.join(tmp.dir, 'os.img');
    makeDisk(img, SIZE, [{ at: 0, data: prng(11)(SIZE) }]);
    expect((await cli(['image', 'create', 'os', '--from', img], env)).code).toBe(0);
    for (const ep of [A, B, C]) {
      expect((await cli(['desktop', 'create', ep.desktop, '--image', 'os'], env)).code).toBe(0);
      expect((await cli(['endpoint', 'add', ep.mac, '--desktop', ep.desktop, '--name', ep.name], env)).code).toBe(0);
      makeDisk(disk(ep), DISK_SIZE, []);
    }
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  const admin = (method: 'GET' | 'POST', url: string) => app.inject({ method, url, headers: { authorization: `Bearer ${srv.token}` }, ...(method === 'POST' ? { payload: {} } : {}) });
  const endpoint = async (mac: string) => (await admin('GET', `/api/v1/endpoints/${mac}`)).json();
  const script = async (mac: string, platform = 'pcbios') => (await app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac}&platform=${platform}` })).payload;
  const tokenOf = (s: string) => /deskfuse\.token=(\S+)/.exec(s)?.[1];
  const session = (payload: object) => app.inject({ method: 'POST', url: '/boot/session', payload });
  const secretOn = async (file: string) => {
    const d = await openDisk(file, false);
    try {
      return (await readState(d.fh, d.size))?.secret ?? null;
    } finally {
      await d.close();
    }
  };
  /** The boot-stage agent program with this boot's token (not in the boot stage: it stops at the hand-off). */
  const agent = (ep: { mac: string; name: string }, token: string) => execa(process.execPath, [AGENT], {
    reject: false, timeout: 60_000,
    env: {
      DESKFUSE_CMDLINE: `console=ttyS0 deskfuse.server=${srv.url} deskfuse.token=${token} deskfuse.mac=${ep.mac} deskfuse.disk=${disk(ep)}`,
      DESKFUSE_SESSION_FILE: path.join(tmp.dir, `session-${++runs}.json`), DESKFUSE_BOOT_STAGE: '',
    },
  });
  /** First boot of a blank disk: the agent provisions it and binds its secret. */
  const provision = async (ep: { mac: string; name: string; desktop: string }) => {
    const s = await script(ep.mac);
    expect(s).toContain('deskfuse.action=sync');
    const r = await agent(ep, tokenOf(s)!);
    expect(r.stdout).toMatch(new RegExp(`@@MARK SESSION .*endpoint=${ep.name} desktop=${ep.desktop} action=sync .*secret=provision`));
    expect(r.stdout).toMatch(/@@MARK SYNCED /);
    const secret = await secretOn(disk(ep));
    expect(secret).not.toBeNull();
    expect(await endpoint(ep.mac)).toMatchObject({ state: 'enrolled', disk: 'clean', secret: 'bound' });
    return secret!;
  };
  /** A boot that goes through the agent although the disk is up to date: the OS asked for a commit at shutdown. */
  const commitBoot = async (ep: { mac: string }) => {
    expect((await app.inject({ method: 'POST', url: '/boot/commit-request', payload: { mac: ep.mac } })).json().action).toBe('commit-poweroff');
    const s = await script(ep.mac);
    expect(s).toContain('deskfuse.action=commit-poweroff');
    return tokenOf(s)!;
  };

  it('the real agent provisions a blank disk at its first boot and proves the disk secret at the next', async () => {
    const secret = await provision(A);
    // Up to date: iPXE boots the disk; the OS writes to it and at shutdown asks for a commit. The next
    // boot proves the disk's secret and commits.
    expect(await script(A.mac)).toContain('sanboot');
    const fd = openSync(disk(A), 'r+');
    writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 64 * 1024);
    closeSync(fd);
    const r = await agent(A, await commitBoot(A));
    expect(r.stdout).toMatch(/@@MARK SESSION .*endpoint=pc-a .*action=commit-poweroff .*secret=proved/);
    expect(r.stdout).toMatch(/@@MARK COMMITTED .*version=2 committed=true/);
    expect((await secretOn(disk(A)))!.equals(secret)).toBe(true);
    expect(await endpoint(A.mac)).toMatchObject({ state: 'enrolled', disk: 'clean', diskVersion: 2, secret: 'bound' });
  });

  it('an attacker who knows the MAC gets a boot token but no desktop token; the endpoint then waits for an admin', async () => {
    // UEFI endpoints hand off through the boot stage, so even an up-to-date endpoint gets a token.
    const token = tokenOf(await script(A.mac, 'efi'))!;
    expect(token).toMatch(/^dfb_/);
    // The attacker has the MAC and the token, not the disk.
    const r = await session({ token, mac: A.mac, platform: 'efi' });
    expect(r.statusCode).toBe(403);
    expect(r.json().code).toBe('DF_ERR_ENDPOINT_SECRET');
    expect(r.payload).not.toContain('dfd_'); // no desktop token in any form
    expect(await endpoint(A.mac)).toMatchObject({ state: 'pending-reprovision', secret: 'bound', diskVersion: 2 });
    const events = (await admin('GET', `/api/v1/events?endpoint=${A.mac}`)).json().events as Array<{ phase: string; detail: Record<string, unknown> }>;
    expect(events.at(-1)).toMatchObject({ phase: 'refused', detail: { reason: expect.stringContaining('no proof of the disk secret') } });
    // From now on the MAC gets a wait screen and no token, also for the real endpoint; approving is not the way out.
    const wait = await script(A.mac, 'efi');
    expect(wait).toContain('deskfuse endpoint reprovision pc-a');
    expect(tokenOf(wait)).toBeUndefined();
    const approve = await admin('POST', `/api/v1/endpoints/${A.mac}/approve`);
    expect(approve.json().code).toBe('DF_ERR_ENDPOINT_STATE');
    const list = await cli(['endpoint', 'list'], env);
    expect(list.stdout).toMatch(/pc-a\s+52:54:00:5e:c0:01\s+pending-reprovision\s+alice/);
  });

  it('a disk whose state area was wiped is refused until an admin reprovisions; the next boot provisions a new secret', async () => {
    const old = await provision(B);
    // Wipe the state area (what a partitioning tool "repairing" the backup GPT does to it).
    const fd = openSync(disk(B), 'r+');
    const start = areaStart(GEOMETRY, DISK_SIZE);
    writeSync(fd, Buffer.alloc(DISK_SIZE - start), 0, DISK_SIZE - start, start);
    closeSync(fd);
    expect(await secretOn(disk(B))).toBeNull();

    const refused = await agent(B, await commitBoot(B));
    expect(refused.stdout).toContain('DF_ERR_ENDPOINT_SECRET');
    expect(refused.stdout).not.toContain('@@MARK SESSION');
    expect(refused.exitCode).toBe(1);
    expect(await endpoint(B.mac)).toMatchObject({ state: 'pending-reprovision' });
    expect(await secretOn(disk(B))).toBeNull(); // nothing written

    const rep = await cli(['endpoint', 'reprovision', B.name, '--json'], env);
    expect(rep.code, rep.stderr).toBe(0);
    expect(JSON.parse(rep.stdout)).toMatchObject({ state: 'enrolled', disk: 'unknown', secret: 'none' });
    const fresh = await provision(B);
    expect(fresh.equals(old)).toBe(false);
    // The new secret is the one that counts from now on.
    const again = await agent(B, await commitBoot(B));
    expect(again.stdout).toMatch(/@@MARK SESSION .*endpoint=pc-b .*secret=proved/);
    expect(again.stdout).toMatch(/@@MARK COMMITTED /);
  });

  it("a boot's proof is good once: replayed with its token or with a fresh one, it is refused", async () => {
    const secret = await provision(C);
    firstSecretOfC = secret;
    const t1 = await commitBoot(C);
    const body = { token: t1, mac: C.mac, proof: proveEndpoint(secret, C.mac, t1) };
    expect(body.proof.key).toBe(endpointKey(secret));
    const first = await session(body);
    expect(first.statusCode, first.payload).toBe(200);
    expect(first.json()).toMatchObject({ desktop: 'carol', provision: false });
    const same = await session(body);
    expect(same.json().code).toBe('DF_ERR_BOOT_TOKEN_USED');
    // The captured proof with the next boot's token (the MAC's to ask for): the signature covers the old token.
    const t2 = await commitBoot(C);
    const replay = await session({ ...body, token: t2 });
    expect(replay.statusCode).toBe(403);
    expect(replay.json().code).toBe('DF_ERR_ENDPOINT_SECRET');
    expect(await endpoint(C.mac)).toMatchObject({ state: 'pending-reprovision' });
  });

  it('an endpoint with no bound secret must offer a valid key; a provisioning that did not finish can be retried', async () => {
    expect((await cli(['endpoint', 'reprovision', C.name], env)).code).toBe(0);
    const t1 = tokenOf(await script(C.mac))!;
    const none = await session({ token: t1, mac: C.mac });
    expect(none.json().code).toBe('DF_ERR_ENDPOINT_SECRET');
    expect(await endpoint(C.mac)).toMatchObject({ state: 'enrolled', secret: 'none' });
    // An offer binds only when its disk reports a finished sync: until then a new boot may offer again.
    const k1 = newEndpointSecret();
    const t2 = tokenOf(await script(C.mac))!;
    expect((await session({ token: t2, mac: C.mac, offer: proveEndpoint(k1, C.mac, t2) })).json()).toMatchObject({ provision: true });
    expect(await endpoint(C.mac)).toMatchObject({ secret: 'provisioning' });
    const r = await agent(C, tokenOf(await script(C.mac))!);
    expect(r.stdout).toMatch(/@@MARK SESSION .*secret=provision/);
    expect(r.stdout).toMatch(/@@MARK SYNCED /);
    expect(await endpoint(C.mac)).toMatchObject({ state: 'enrolled', secret: 'bound' });
    const k2 = (await secretOn(disk(C)))!;
    expect(k2.equals(k1)).toBe(false);
    expect(k2.equals(firstSecretOfC!)).toBe(false); // the disk still had its old state: re-keyed in place
    // k1's offer was never bound: it proves nothing now.
    const t3 = await commitBoot(C);
    expect((await session({ token: t3, mac: C.mac, proof: proveEndpoint(k1, C.mac, t3) })).json().code).toBe('DF_ERR_ENDPOINT_SECRET');
  });
});
