import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { loadServerConfig } from '../../src/config/server.js';
import { newEndpointSecret, proveEndpoint } from '../../src/endpoint/proof.js';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';
import { startInProcess } from '../helpers/server.js';

const MAC = '52:54:00:12:34:56';
const OTHER = '52:54:00:ab:cd:ef';
const KERNEL = prng(11)(200 * 1024);
const INITRD = prng(12)(3 * 1024 * 1024 + 5);
const stageHash = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 32);
let bootDir = '';
/** The server's clock runs this far ahead of the real one (a power-on hours after a shutdown). */
let skewMs = 0;

/** The boot flow over HTTP (inject): enrolment, decisions, one-time tokens, events, commit requests. */
describe('network boot flow', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let app: FastifyInstance;
  let admin: (method: 'GET' | 'POST' | 'PATCH' | 'PUT', url: string, payload?: unknown) => Promise<Awaited<ReturnType<FastifyInstance['inject']>>>;

  beforeAll(async () => {
    tmp = tempDir('df-boot-');
    const data = path.join(tmp.dir, 'data');
    bootDir = path.join(tmp.dir, 'boot');
    mkdirSync(bootDir);
    writeFileSync(path.join(bootDir, 'vmlinuz'), KERNEL);
    writeFileSync(path.join(bootDir, 'initrd.img'), INITRD);
    srv = await startInProcess(data, { now: () => new Date(Date.now() + skewMs), bootDir });
    app = srv.appliance.app;
    admin = (method, url, payload) => app.inject({ method, url, headers: { authorization: `Bearer ${srv.token}` }, ...(payload !== undefined ? { payload: payload as object } : {}) });
    const img = path.join(tmp.dir, 'base.img');
    makeDisk(img, 4 * 1024 * 1024, [{ at: 0, data: prng(3)(256 * 1024) }]);
    const env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    expect((await cli(['image', 'create', 'os', '--from', img, '--boot-partition', '1', '--boot-kernel', '/vmlinuz', '--boot-initrd', '/initrd.img', '--boot-cmdline', 'console=ttyS0'], env)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'alice', '--image', 'os'], env)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'bob', '--image', 'os'], env)).code).toBe(0);
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  const script = (q: string) => app.inject({ method: 'GET', url: `/boot/ipxe?${q}` });
  const tokenOf = (s: string) => /deskfuse\.token=(\S+)/.exec(s)?.[1];
  // The secret MAC's disk holds once it is provisioned (what the agent keeps in the state area).
  const diskSecret = newEndpointSecret();

  it('first contact without identity chains to a request that carries it', async () => {
    const r = await app.inject({ method: 'GET', url: '/boot/ipxe', headers: { host: '10.0.0.1:8080' } });
    expect(r.statusCode).toBe(200);
    expect(r.payload).toMatch(/^#!ipxe/);
    expect(r.payload).toContain('chain --replace --autofree http://10.0.0.1:8080/boot/ipxe?mac=${netX/mac}');
  });

  it('an unknown MAC is enrolled as pending and gets a wait screen, never a token', async () => {
    const r = await script(`mac=${MAC}&platform=pcbios&buildarch=i386&uuid=u-1`);
    expect(r.statusCode).toBe(200);
    expect(r.payload).toContain('waiting for an admin to approve this endpoint');
    expect(r.payload).toContain('deskfuse endpoint approve ep-525400123456 --desktop NAME');
    expect(r.payload).not.toContain('deskfuse.token');
    const list = (await admin('GET', '/api/v1/endpoints')).json().endpoints;
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ id: 'ep-525400123456', state: 'pending', macs: [MAC], uuid: 'u-1', firmware: 'bios', disk: 'unknown' });
    // Asking again while it waits: one event for the whole wait.
    await script(`mac=${MAC}&platform=pcbios`);
    await script(`mac=${MAC}&platform=pcbios`);
    const evs = (await admin('GET', `/api/v1/events?endpoint=${MAC}`)).json().events as Array<{ phase: string }>;
    expect(evs.map((e) => e.phase)).toEqual(['enrol', 'script']);
  });

  it('approved without a desktop: still no token', async () => {
    expect((await admin('POST', '/api/v1/endpoints/52-54-00-12-34-56/approve', {})).statusCode).toBe(200);
    const r = await script(`mac=${MAC}&platform=pcbios`);
    expect(r.payload).toContain('no desktop is assigned');
    expect(tokenOf(r.payload)).toBeUndefined();
  });

  it('assigned: the boot stage with a one-time token bound to the MAC, used once', async () => {
    expect((await admin('PATCH', `/api/v1/endpoints/${MAC}`, { desktop: 'alice' })).statusCode).toBe(200);
    const r = await script(`mac=${MAC}&platform=pcbios`);
    // The boot stage under its content hashes (an HTTP cache at the site may keep them forever).
    expect(r.payload).toContain(`kernel --name vmlinuz http://localhost:80/boot/stage/${stageHash(KERNEL)}/vmlinuz?mac=${MAC} initrd=initrd.img`);
    expect(r.payload).toContain(`initrd --name initrd.img http://localhost:80/boot/stage/${stageHash(INITRD)}/initrd.img?mac=${MAC} ||`);
    // The trust initrd: the server's signing keys, by content hash; GNU cpio unpacks its trust file.
    const trustUrl = /initrd --name trust\.cpio http:\/\/localhost:80(\/boot\/trust\/[0-9a-f]{32}\/trust\.cpio) \|\|/.exec(r.payload)?.[1];
    expect(trustUrl, r.payload).toBeDefined();
    expect(r.payload).toContain('initrd=initrd.img initrd=trust.cpio');
    const cpio = await app.inject({ method: 'GET', url: trustUrl! });
    expect(cpio.statusCode).toBe(200);
    expect(stageHash(cpio.rawPayload)).toBe(/trust\/([0-9a-f]{32})/.exec(trustUrl!)![1]);
    const trust = JSON.parse(execFileSync('cpio', ['-i', '--to-stdout', '--quiet', 'etc/deskfuse/trust.json'], { input: cpio.rawPayload, encoding: 'utf8' }));
    const keys = (await admin('GET', '/api/v1/keys')).json();
    expect(trust).toEqual(keys.trust);
    expect(trust.keys[0].id).toBe(keys.keyId);
    expect((await app.inject({ method: 'GET', url: `/boot/trust/${'0'.repeat(32)}/trust.cpio` })).json().code).toBe('DF_ERR_BOOT_STAGE_CHANGED');
    // UEFI: the EFI stub reads the initrds back to back, so the archive is padded to start 4-byte aligned after initrd.img.
    const efi = (await script(`mac=${MAC}&platform=efi`)).payload;
    const pad = (4 - (INITRD.length % 4)) % 4;
    const efiUrl = /initrd --name trust\.cpio http:\/\/localhost:80(\S+) \|\|/.exec(efi)![1]!;
    expect(efiUrl).toBe(pad ? `${trustUrl}?pad=${pad}` : trustUrl);
    const padded = (await app.inject({ method: 'GET', url: efiUrl })).rawPayload;
    expect(padded.equals(Buffer.concat([Buffer.alloc(pad), cpio.rawPayload]))).toBe(true);
    expect((INITRD.length + pad) % 4).toBe(0);
    expect(r.payload).toContain('deskfuse.action=sync');
    const token = tokenOf(r.payload)!;
    expect(token).toMatch(/^dfb_/);
    // From another MAC: refused, and the token is spent.
    const other = await app.inject({ method: 'POST', url: '/boot/session', payload: { token, mac: OTHER } });
    expect(other.statusCode).toBe(403);
    expect(other.json().code).toBe('DF_ERR_BOOT_TOKEN_MAC');
    const again = await app.inject({ method: 'POST', url: '/boot/session', payload: { token, mac: MAC } });
    expect(again.statusCode).toBe(401);
    expect(again.json().code).toBe('DF_ERR_BOOT_TOKEN_USED');
    // A fresh token works once.
    const t2 = tokenOf((await script(`mac=${MAC}&platform=pcbios`)).payload)!;
    const ok = await app.inject({ method: 'POST', url: '/boot/session', payload: { token: t2, mac: MAC, offer: proveEndpoint(diskSecret, MAC, t2) } });
    expect(ok.statusCode, ok.payload).toBe(200);
    expect(ok.json()).toMatchObject({ desktop: 'alice', action: 'sync', handoff: 'reboot', reprovision: true, provision: true, imageBoot: { partition: 1, kernel: '/vmlinuz' } });
    expect((await app.inject({ method: 'POST', url: '/boot/session', payload: { token: t2, mac: MAC } })).json().code).toBe('DF_ERR_BOOT_TOKEN_USED');
    expect((await app.inject({ method: 'POST', url: '/boot/session', payload: { token: 'dfb_nonsense-nonsense', mac: MAC } })).json().code).toBe('DF_ERR_UNAUTHORIZED');

    // The session token works for alice only: reading bob or committing to bob is forbidden.
    const dt = ok.json().token as string;
    const asEp = (method: 'GET' | 'POST', url: string, payload?: object) => app.inject({ method, url, headers: { authorization: `Bearer ${dt}` }, ...(payload ? { payload } : {}) });
    expect((await asEp('GET', '/api/v1/desktops/alice')).statusCode).toBe(200);
    expect((await asEp('GET', '/api/v1/desktops/bob')).statusCode).toBe(403);
    const c = await asEp('POST', '/api/v1/desktops/bob/commits', { parent: 1, layer: 'a'.repeat(64), kind: 'voi-commit', fencing: 1 });
    expect(c.statusCode).toBe(403);
    expect(c.json().code).toBe('DF_ERR_FORBIDDEN');
    // …nor report events for another endpoint's desktop.
    await script(`mac=${OTHER}&platform=pcbios`);
    await admin('POST', `/api/v1/endpoints/${OTHER}/approve`, { desktop: 'bob' });
    expect((await asEp('POST', '/boot/events', { mac: OTHER, phase: 'synced', detail: { version: 1 } })).statusCode).toBe(403);

    // The agent reports: synced at version 1 → the next boot has nothing to do (BIOS: sanboot).
    expect((await asEp('POST', '/boot/events', { mac: MAC, phase: 'synced', detail: { version: 1, seconds: 3.5 } })).statusCode).toBe(201);
    const synced = (await admin('GET', `/api/v1/endpoints/${MAC}`)).json();
    expect(synced.lastSync).toMatchObject({ result: 'ok', action: 'sync', version: 1, seconds: 3.5 });
    expect(Object.keys(synced.lastSync.phases)).toEqual(expect.arrayContaining(['script', 'agent', 'synced']));
    expect(synced.lastSync.phases.synced).toBeGreaterThanOrEqual(synced.lastSync.phases.agent);
    // UEFI cannot boot its disk from iPXE: the boot stage does it (kexec: the image declares a kernel).
    const uefi = await script(`mac=${MAC}&platform=efi`);
    expect(uefi.payload).toContain('deskfuse.action=local');
    const local = await script(`mac=${MAC}&platform=pcbios`);
    expect(local.payload).toContain('sanboot --no-describe --drive 0x80');
    expect(tokenOf(local.payload)).toBeUndefined();
    // The OS now runs on the disk: the next boot syncs (it commits what the OS changed first).
    expect((await script(`mac=${MAC}&platform=pcbios`)).payload).toContain('the disk was in use: commit, then sync');
  });

  it('commit at shutdown: the OS asks, the next boot commits and powers off', async () => {
    const r = await app.inject({ method: 'POST', url: '/boot/commit-request', payload: `mac=${MAC}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(r.statusCode).toBe(200);
    expect(r.json().action).toBe('commit-poweroff');
    const s = await script(`mac=${MAC}&platform=pcbios`);
    expect(s.payload).toContain('deskfuse.action=commit-poweroff');
    const t = tokenOf(s.payload)!;
    const sess = (await app.inject({ method: 'POST', url: '/boot/session', payload: { token: t, mac: MAC, proof: proveEndpoint(diskSecret, MAC, t) } })).json();
    expect(sess).toMatchObject({ action: 'commit-poweroff', handoff: 'poweroff', assumeDirty: true, provision: false });
    expect((await app.inject({ method: 'POST', url: '/boot/events', headers: { authorization: `Bearer ${sess.token}` }, payload: { mac: MAC, phase: 'committed', detail: { version: 2 } } })).statusCode).toBe(201);
    expect((await admin('GET', `/api/v1/endpoints/${MAC}`)).json()).toMatchObject({ commitRequested: null, disk: 'clean', diskVersion: 2 });
    // Unknown MACs get "none" (nothing recorded for them).
    expect((await app.inject({ method: 'POST', url: '/boot/commit-request', payload: { mac: '02:00:00:00:00:99' } })).json().action).toBe('none');
  });

  it('a commit order whose boot stage arrives after the window closed (a slow boot path) still powers off', async () => {
    expect((await app.inject({ method: 'POST', url: '/boot/events', headers: { authorization: `Bearer ${srv.token}` }, payload: { mac: MAC, phase: 'local', detail: { via: 'kexec' } } })).statusCode).toBe(201);
    expect((await app.inject({ method: 'POST', url: '/boot/commit-request', payload: { mac: MAC } })).json().action).toBe('commit-poweroff');
    const s = await script(`mac=${MAC}&platform=efi`);
    expect(s.payload).toContain('deskfuse.action=commit-poweroff');
    // The loader took minutes to fetch the boot stage (Secure Boot's GRUB over TFTP on a slow link).
    skewMs += 10 * 60 * 1000;
    const t = tokenOf(s.payload)!;
    const sess = (await app.inject({ method: 'POST', url: '/boot/session', payload: { token: t, mac: MAC, proof: proveEndpoint(diskSecret, MAC, t) } })).json();
    expect(sess).toMatchObject({ action: 'commit-poweroff', handoff: 'poweroff' });
  });

  it('a disabled endpoint boots its disk and never gets a token', async () => {
    expect((await admin('POST', `/api/v1/endpoints/${OTHER}/disable`)).statusCode).toBe(200);
    const r = await script(`mac=${OTHER}&platform=pcbios`);
    expect(r.payload).toContain('this endpoint is disabled');
    expect(tokenOf(r.payload)).toBeUndefined();
  });

  it('a commit order outlives its shutdown only for its window: a power-on hours later commits, syncs and boots', async () => {
    expect((await app.inject({ method: 'POST', url: '/boot/events', headers: { authorization: `Bearer ${srv.token}` }, payload: { mac: MAC, phase: 'local', detail: { via: 'sanboot' } } })).statusCode).toBe(201);
    expect((await app.inject({ method: 'POST', url: '/boot/commit-request', payload: { mac: MAC } })).json().action).toBe('commit-poweroff');
    expect((await admin('GET', `/api/v1/endpoints/${MAC}`)).json().commitRequested).toEqual(expect.any(String));
    // The machine lost power on its way down; someone turns it on three hours later to work.
    skewMs += 3 * 3600 * 1000;
    const s = await script(`mac=${MAC}&platform=pcbios`);
    expect(s.payload).toContain('deskfuse.action=sync');
    expect(s.payload).not.toContain('commit-poweroff');
    const sess = (await app.inject({ method: 'POST', url: '/boot/session', payload: { token: tokenOf(s.payload), mac: MAC, proof: proveEndpoint(diskSecret, MAC, tokenOf(s.payload)!) } })).json();
    expect(sess).toMatchObject({ action: 'sync', handoff: 'reboot', assumeDirty: true });
    const ev = (await admin('GET', `/api/v1/events?endpoint=${MAC}`)).json().events as Array<{ phase: string; detail: { reason?: string } }>;
    expect(ev.filter((e) => e.phase === 'script').at(-1)?.detail.reason).toMatch(/asked for a commit at shutdown \d+ s ago .*commit, then sync/);
    // The sync (which commits first) carries out the order.
    expect((await app.inject({ method: 'POST', url: '/boot/events', headers: { authorization: `Bearer ${sess.token}` }, payload: { mac: MAC, phase: 'synced', detail: { version: 3 } } })).statusCode).toBe(201);
    expect((await admin('GET', `/api/v1/endpoints/${MAC}`)).json()).toMatchObject({ commitRequested: null, disk: 'clean' });
  });

  it('an agent error with line breaks and ${ is kept as one clean line; the next boot falls back to the disk (no 500)', async () => {
    const error = 'DF_ERR_DISK_IO: write failed\nat sector 99\r\n#!ipxe\nshell ${net0/mac}';
    const r = await app.inject({ method: 'POST', url: '/boot/events', headers: { authorization: `Bearer ${srv.token}` }, payload: { mac: MAC, phase: 'error', detail: { action: 'sync', error } } });
    expect(r.statusCode).toBe(201);
    expect(r.json().detail.error).toBe('DF_ERR_DISK_IO: write failed at sector 99 #!ipxe shell $ {net0/mac}');
    expect((await admin('GET', `/api/v1/endpoints/${MAC}`)).json().lastSync).toMatchObject({ result: 'error', error: 'DF_ERR_DISK_IO: write failed at sector 99 #!ipxe shell $ {net0/mac}' });
    const s = await script(`mac=${MAC}&platform=pcbios`);
    expect(s.statusCode).toBe(200);
    expect(s.payload).toContain('booting the disk as it is');
    expect(s.payload).toContain('sanboot --no-describe --drive 0x80');
    const lines = s.payload.split('\n');
    expect(lines.filter((l) => l.trim() === '#!ipxe')).toHaveLength(1); // the script's own first line only
    expect(lines.some((l) => /^\s*shell\b/.test(l))).toBe(false); // the report never became a command
    // a serial number with a line break is cleaned where it enters too
    const o = await script(`mac=${OTHER}&platform=pcbios&serial=${encodeURIComponent('SN1\nshell')}`);
    expect(o.statusCode).toBe(200);
    expect((await admin('GET', `/api/v1/endpoints/${OTHER}`)).json().serial).toBe('SN1 shell');
  });

  it('bad input: coded errors, nothing recorded', async () => {
    const before = (await admin('GET', '/api/v1/endpoints')).json().endpoints.length;
    expect((await script('mac=not-a-mac')).json().code).toBe('DF_ERR_BAD_REQUEST');
    expect((await app.inject({ method: 'POST', url: '/boot/session', payload: { token: 'x' } })).json().code).toBe('DF_ERR_BAD_REQUEST');
    expect((await admin('PATCH', `/api/v1/endpoints/${MAC}`, { desktop: 'nobody' })).json().code).toBe('DF_ERR_DESKTOP_NOT_FOUND');
    expect((await admin('PATCH', `/api/v1/endpoints/${MAC}`, { bootMethod: 'floppy' })).json().code).toBe('DF_ERR_BAD_REQUEST');
    expect((await admin('GET', '/api/v1/endpoints/nope')).json().code).toBe('DF_ERR_ENDPOINT_NOT_FOUND');
    expect((await app.inject({ method: 'GET', url: '/api/v1/endpoints' })).statusCode).toBe(401);
    expect((await admin('GET', '/api/v1/endpoints')).json().endpoints.length).toBe(before);
  });

  it('boot events: listed in order and streamed; the CLI shows them', async () => {
    const ev = (await admin('GET', `/api/v1/events?endpoint=${MAC}`)).json().events as Array<{ phase: string }>;
    expect(ev.map((e) => e.phase)).toEqual(expect.arrayContaining(['enrol', 'script', 'agent', 'synced', 'local', 'poweroff']));
    const env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    const list = await cli(['endpoint', 'list'], env);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/ep-525400123456\s+52:54:00:12:34:56\s+enrolled\s+alice/);
    const show = await cli(['endpoint', 'show', MAC, '--json'], env);
    expect(JSON.parse(show.stdout)).toMatchObject({ desktop: 'alice', commitRequested: null });
    expect((await cli(['endpoint', 'assign', MAC, '--boot-method', 'floppy'], env)).code).toBe(2);
  });

  it('the boot stage under its content hash: immutable, 304 to its etag, a stale hash is 404 coded, a rebuild gets a new URL', async () => {
    const k = stageHash(KERNEL);
    const i = stageHash(INITRD);
    const before = (await admin('GET', `/api/v1/events?endpoint=${MAC}`)).json().events.length as number;
    const kr = await app.inject({ method: 'GET', url: `/boot/stage/${k}/vmlinuz?mac=${MAC}` });
    expect(kr.statusCode).toBe(200);
    expect(kr.rawPayload.equals(KERNEL)).toBe(true);
    expect(kr.headers).toMatchObject({ 'cache-control': 'public, max-age=31536000, immutable', etag: `"${k}"`, 'content-length': String(KERNEL.length) });
    // Over a real socket too (sendfile(2) path), byte-exact.
    const ir = await fetch(`${srv.url}/boot/stage/${i}/initrd.img`);
    expect(ir.status).toBe(200);
    expect(Buffer.from(await ir.arrayBuffer()).equals(INITRD)).toBe(true);
    expect(ir.headers.get('etag')).toBe(`"${i}"`);
    // The known endpoint's fetch left its event, as with the plain URL.
    const ev = (await admin('GET', `/api/v1/events?endpoint=${MAC}&limit=200`)).json().events as Array<{ phase: string; detail: { bytes?: number } }>;
    expect(ev.length).toBe(before + 1);
    expect(ev.at(-1)).toMatchObject({ phase: 'kernel', detail: { bytes: KERNEL.length } });
    // A cache revalidating gets 304 and no body; HEAD the headers alone.
    const nm = await app.inject({ method: 'GET', url: `/boot/stage/${k}/vmlinuz`, headers: { 'if-none-match': `"${k}"` } });
    expect(nm.statusCode).toBe(304);
    expect(nm.rawPayload.length).toBe(0);
    expect(nm.headers).toMatchObject({ etag: `"${k}"`, 'cache-control': 'public, max-age=31536000, immutable' });
    const head = await app.inject({ method: 'HEAD', url: `/boot/stage/${i}/initrd.img` });
    expect([head.statusCode, head.headers['content-length'], head.rawPayload.length]).toEqual([200, String(INITRD.length), 0]);
    // Bad input: a malformed hash is 400; a well-formed stale one 404 with its code and no caching.
    expect((await app.inject({ method: 'GET', url: '/boot/stage/xyz/vmlinuz' })).json().code).toBe('DF_ERR_BAD_REQUEST');
    const stale = await app.inject({ method: 'GET', url: `/boot/stage/${'0'.repeat(32)}/vmlinuz` });
    expect(stale.statusCode).toBe(404);
    expect(stale.json()).toMatchObject({ code: 'DF_ERR_BOOT_STAGE_CHANGED', file: 'vmlinuz', current: k });
    expect(stale.headers['cache-control']).toBe('no-store');
    // Rebuilt (a new file renamed in): the script names the new hash, the old one is refused, the plain URL serves the new bytes.
    const k2 = Buffer.concat([KERNEL, Buffer.from('rebuilt')]);
    writeFileSync(path.join(bootDir, 'vmlinuz.new'), k2);
    renameSync(path.join(bootDir, 'vmlinuz.new'), path.join(bootDir, 'vmlinuz'));
    expect((await script(`mac=${OTHER}&platform=pcbios`)).statusCode).toBe(200); // (not an agent boot: no hash needed)
    const old = await app.inject({ method: 'GET', url: `/boot/stage/${k}/vmlinuz` });
    expect(old.json()).toMatchObject({ code: 'DF_ERR_BOOT_STAGE_CHANGED', current: stageHash(k2) });
    const fresh = await app.inject({ method: 'GET', url: `/boot/stage/${stageHash(k2)}/vmlinuz` });
    expect(fresh.rawPayload.equals(k2)).toBe(true);
    const plain = await app.inject({ method: 'GET', url: '/boot/vmlinuz' });
    expect(plain.rawPayload.equals(k2)).toBe(true);
    expect(plain.headers['cache-control']).toBe('no-cache');
    // Over a real socket the stage files are sent from descriptors held between requests: a rebuild
    // renamed in (or rewritten in place) is seen at once, never served under the old hash.
    const viaSocket = async (url: string) => {
      const r = await fetch(`${srv.url}${url}`);
      return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
    };
    expect((await viaSocket(`/boot/stage/${stageHash(k2)}/vmlinuz`)).body.equals(k2)).toBe(true); // held now
    const k3 = Buffer.concat([KERNEL, Buffer.from('rebuilt again')]);
    writeFileSync(path.join(bootDir, 'vmlinuz.new'), k3);
    renameSync(path.join(bootDir, 'vmlinuz.new'), path.join(bootDir, 'vmlinuz'));
    const gone = await viaSocket(`/boot/stage/${stageHash(k2)}/vmlinuz`);
    expect([gone.status, JSON.parse(gone.body.toString()).code]).toEqual([404, 'DF_ERR_BOOT_STAGE_CHANGED']);
    expect((await viaSocket('/boot/vmlinuz')).body.equals(k3)).toBe(true);
    expect((await viaSocket(`/boot/stage/${stageHash(k3)}/vmlinuz`)).body.equals(k3)).toBe(true);
    const k4 = Buffer.concat([KERNEL, Buffer.from('rewritten in place!')]);
    writeFileSync(path.join(bootDir, 'vmlinuz'), k4); // same inode, new size and mtime
    const inPlace = await viaSocket(`/boot/stage/${stageHash(k3)}/vmlinuz`);
    expect([inPlace.status, JSON.parse(inPlace.body.toString()).code]).toEqual([404, 'DF_ERR_BOOT_STAGE_CHANGED']);
    expect((await viaSocket(`/boot/stage/${stageHash(k4)}/vmlinuz`)).body.equals(k4)).toBe(true);
  });

  it('the boot stage files: 503 with the build command when missing, streamed when present', async () => {
    // A data dir of its own with a boot dir we control: initrd.img present, vmlinuz missing.
    const t2 = tempDir('df-bootdir-');
    try {
      mkdirSync(path.join(t2.dir, 'boot'));
      writeFileSync(path.join(t2.dir, 'boot', 'initrd.img'), Buffer.alloc(3 * 1024 * 1024, 7));
      const cfg = loadServerConfig({ flags: { data: path.join(t2.dir, 'data'), listen: '127.0.0.1:0', logLevel: 'silent', bootDir: path.join(t2.dir, 'boot') } });
      const a: Appliance = await openAppliance(cfg);
      try {
        const f = await a.app.inject({ method: 'GET', url: '/boot/initrd.img' });
        expect(f.statusCode).toBe(200);
        expect(f.rawPayload.equals(Buffer.alloc(3 * 1024 * 1024, 7))).toBe(true);
        const head = await a.app.inject({ method: 'HEAD', url: '/boot/initrd.img' });
        expect(head.statusCode).toBe(200);
        expect(head.headers['content-length']).toBe(String(3 * 1024 * 1024));
        expect(head.rawPayload.length).toBe(0);
        const missing = await a.app.inject({ method: 'GET', url: `/boot/vmlinuz?mac=${MAC}` });
        expect(missing.statusCode).toBe(503);
        expect(missing.json()).toMatchObject({ code: 'DF_ERR_BOOT_FILES_MISSING' });
        expect(missing.json().message).toContain('npm run build:initramfs');
      } finally {
        await a.close();
      }
    } finally {
      t2.cleanup();
    }
  });
});
