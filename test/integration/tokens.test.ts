import { createHash } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';
import { fails, requireNbdClients, run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * Issue 10 item 7: tokens can be listed and revoked (`deskfuse token list|revoke`), and a hypervisor
 * host gets a token that runs `vdi start` (its own VDI sessions) and nothing an admin does.
 */
let tmp: ReturnType<typeof tempDir>;
let srv: VdiAppliance;
let admin: Record<string, string>;
let hyper: string;
let hyperId: string;
const as = (token: string) => ({ DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
const sha = (t: string) => createHash('sha256').update(t).digest('hex');

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-tokens-');
  srv = await startVdiAppliance(path.join(tmp.dir, 'data'));
  admin = as(srv.token);
  const img = path.join(tmp.dir, 'base.img');
  makeDisk(img, 4 * 1024 * 1024, [{ at: 0, data: prng(3)(256 * 1024) }]);
  expect((await cli(['image', 'create', 'win', '--from', img], admin)).code).toBe(0);
  for (const d of ['alice', 'bob']) expect((await cli(['desktop', 'create', d, '--image', 'win'], admin)).code).toBe(0);
  const t = await cli(['token', 'create', '--scope', 'hypervisor:host1', '--ttl', '86400'], admin);
  expect(t.code, t.stderr).toBe(0);
  hyper = t.stdout.trim();
  expect(hyper).toMatch(/^dfh_[A-Za-z0-9_-]{43}$/); // the token alone on stdout
  hyperId = /token ([0-9a-f]{16}) of scope hypervisor:host1/.exec(t.stderr)![1]!;
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('a hypervisor token', () => {
  it('runs vdi start and follows its own sessions; the session export it was handed reads', async () => {
    const x = await cli(['vdi', 'start', 'alice', '--print-libvirt-xml'], as(hyper));
    expect(x.code, x.stderr).toBe(0);
    expect(x.stdout).toContain('<domain');
    const id = /VDI session (\S+) created on alice/.exec(x.stderr)![1]!;
    const list = await cli(['vdi', 'session', 'list', '--json'], as(hyper));
    expect(list.json.sessions.map((s: { id: string; createdBy: string }) => [s.id, s.createdBy])).toEqual([[id, 'hypervisor:host1']]);
    expect((await cli(['vdi', 'session', 'show', id, '--json'], as(hyper))).json).toMatchObject({ id, desktop: 'alice', state: 'open' });
    const c = await cli(['vdi', 'session', 'create', 'bob', '--json'], as(hyper));
    expect(c.code, c.stderr).toBe(0);
    expect(JSON.parse(await run('qemu-img', ['info', '--output=json', c.json.url]))['virtual-size']).toBe(4 * 1024 * 1024);
    for (const s of [id, c.json.session]) expect((await cli(['vdi', 'session', 'discard', s], admin)).code).toBe(0);
  });

  it("is refused another token's sessions and everything an admin does (403 DF_ERR_FORBIDDEN)", async () => {
    const other = await cli(['vdi', 'session', 'create', 'bob', '--json'], admin);
    expect(other.code, other.stderr).toBe(0);
    const show = await cli(['vdi', 'session', 'show', other.json.session, '--json'], as(hyper));
    expect(show.json.error).toMatchObject({ code: 'DF_ERR_FORBIDDEN' });
    expect((await cli(['vdi', 'session', 'list', '--json'], as(hyper))).json.sessions.map((s: { id: string }) => s.id)).not.toContain(other.json.session);
    const denied: string[][] = [
      ['vdi', 'session', 'commit', other.json.session], ['vdi', 'session', 'discard', other.json.session],
      ['image', 'list'], ['image', 'show', 'win'], ['ref', 'set', 'win', 'main', '1', '--expect', '1'],
      ['desktop', 'list'], ['desktop', 'token', 'alice'], ['desktop', 'lease', 'break', 'bob'],
      ['endpoint', 'list'], ['endpoint', 'approve', 'ep-020000000001'],
      ['token', 'list'], ['token', 'create', '--scope', 'admin'], ['token', 'revoke', hyperId],
    ];
    for (const args of denied) {
      const r = await cli([...args, '--json'], as(hyper));
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.json?.error, args.join(' ')).toMatchObject({ code: 'DF_ERR_FORBIDDEN' });
    }
    const metrics = await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${hyper}` } });
    expect(metrics.status).toBe(403);
    // nor does it read image exports over NBD
    const nbd = await fails('qemu-img', ['info', srv.nbdUrl(`win@main:${hyper}`)]);
    expect(nbd.status).not.toBe(0);
    expect((await cli(['vdi', 'session', 'discard', other.json.session], admin)).code).toBe(0);
  });
});

describe('deskfuse token list | revoke', () => {
  it('token --help and token help print the usage and exit 0; no subcommand is a usage error (2)', async () => {
    for (const a of [['token', '--help'], ['token', 'help'], ['token', 'revoke', '--help'], ['token', 'help', 'revoke']]) {
      const h = await cli(a, {});
      expect(h.code, a.join(' ')).toBe(0);
      expect(h.stdout).toContain('deskfuse token revoke ID');
    }
    expect((await cli(['token'], {})).code).toBe(2);
  });

  it('lists id, scope, created, expires and last use, never a secret or its hash', async () => {
    const desk = (await cli(['desktop', 'token', 'alice'], admin)).stdout.trim();
    const l = await cli(['token', 'list', '--json'], admin);
    expect(l.code, l.stderr).toBe(0);
    const byScope = Object.fromEntries(l.json.tokens.map((t: { scope: string }) => [t.scope, t]));
    expect(Object.keys(byScope).sort()).toEqual(['admin', 'desktop:alice', 'hypervisor:host1']);
    expect(byScope['hypervisor:host1']).toEqual({ id: hyperId, scope: 'hypervisor:host1', createdAt: expect.any(String), expiresAt: expect.any(String), lastUsedAt: expect.any(String) });
    expect(byScope.admin).toMatchObject({ id: sha(srv.token).slice(0, 16), expiresAt: null });
    expect(byScope['desktop:alice'].lastUsedAt).toBeNull(); // not used yet
    const text = await cli(['token', 'list'], admin);
    expect(text.stdout).toMatch(/^ID\s+SCOPE\s+CREATED\s+EXPIRES\s+LAST USED\n/);
    for (const secret of [srv.token, hyper, desk]) {
      for (const out of [l.stdout, text.stdout]) {
        expect(out).not.toContain(secret);
        expect(out).not.toContain(sha(secret));
      }
    }
  });

  it('a revoked token is refused at once (401); unknown ids and the last admin token are coded errors', async () => {
    expect((await cli(['vdi', 'session', 'list'], as(hyper))).code).toBe(0);
    const r = await cli(['token', 'revoke', hyperId, '--json'], admin);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.revoked).toMatchObject({ id: hyperId, scope: 'hypervisor:host1' });
    const after = await cli(['vdi', 'session', 'list', '--json'], as(hyper));
    expect(after.json.error).toMatchObject({ code: 'DF_ERR_UNAUTHORIZED' });
    expect((await cli(['token', 'list', '--json'], admin)).json.tokens.map((t: { id: string }) => t.id)).not.toContain(hyperId);
    expect((await cli(['token', 'revoke', hyperId, '--json'], admin)).json.error).toMatchObject({ code: 'DF_ERR_TOKEN_NOT_FOUND' });
    expect((await cli(['token', 'revoke', sha(srv.token).slice(0, 16), '--json'], admin)).json.error).toMatchObject({ code: 'DF_ERR_LAST_ADMIN_TOKEN' });
    expect((await cli(['token', 'create', '--scope', 'root', '--json'], admin)).json.error).toMatchObject({ code: 'DF_ERR_BAD_REQUEST' });
    expect((await cli(['token', 'create', '--scope', 'desktop:nobody', '--json'], admin)).json.error).toMatchObject({ code: 'DF_ERR_DESKTOP_NOT_FOUND' });
    // with a second admin token, the first may go
    const second = (await cli(['token', 'create', '--scope', 'admin'], admin)).stdout.trim();
    expect((await cli(['token', 'revoke', sha(srv.token).slice(0, 16)], as(second))).code).toBe(0);
    expect((await cli(['image', 'list', '--json'], admin)).json.error).toMatchObject({ code: 'DF_ERR_UNAUTHORIZED' });
    expect((await cli(['image', 'list', '--json'], as(second))).code).toBe(0);
  });
});
