/**
 * Issue 15, signed versions: a tampering proxy between the agent (the built CLI) and the server
 * swaps an index for another valid version's, replays an old head (downgrade), serves a frozen
 * one, a forged manifest and stripped signatures. Each is refused with its code and the disk file
 * keeps every byte (sha256 of the whole file, state area included). An admin rollback and a key
 * rotation are accepted; a key nothing endorses is not.
 */
import { copyFileSync, readFileSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readState } from '../../src/agent/state-area.js';
import { keyIdOf, newSigningKey, rawPublicKey } from '../../src/sign/ed25519.js';
import { signStatement, type Signed, type StatementBody } from '../../src/sign/statements.js';
import { baseDisk, patch, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { startProxy, type ProxyAction, type TestProxy } from '../helpers/proxy.js';
import { cli, startInProcess, tempDir } from '../helpers/server.js';

const MiB = 1024 * 1024;
const VS = 32 * MiB;
const DISK = VS + 4 * MiB;

let tmp: ReturnType<typeof tempDir>;
let srv: Awaited<ReturnType<typeof startInProcess>>;
let proxy: TestProxy;
let admin: Record<string, string>;
let agentEnv: Record<string, string>;
/** The server's clock: moved back to make it sign a head that is stale when it arrives. */
let skewMs = 0;
const f = (n: string) => path.join(tmp.dir, n);
const imageSha: Record<number, string> = {};

type Answer = { head: Signed; manifest: Signed; rollback: Signed | null; chain: { root: { keyId: string; key: string }; endorsements: Signed[] } };
const isHead = (url: string) => /\/desktops\/kiosk\/signed-head/.test(url);
/** Rewrite only the signed-head answer. */
const onHead = (fn: (a: Answer) => unknown) => {
  proxy.hooks.onResponse = ({ url }, body): ProxyAction => (isHead(url) ? { body: Buffer.from(JSON.stringify(fn(JSON.parse(body.toString()) as Answer))) } : undefined);
};

async function adminBytes(url: string): Promise<Buffer> {
  const r = await fetch(`${srv.url}${url}`, { headers: { authorization: `Bearer ${srv.token}` } });
  return Buffer.from((await r.arrayBuffer()) as ArrayBuffer);
}

function blankDisk(name: string): string {
  writeFileSync(f(name), '');
  truncateSync(f(name), DISK);
  return f(name);
}

const sync = (disk: string, extra: string[] = []) => cli(['agent', 'sync', '--disk', disk, '--desktop', 'kiosk', '--json', ...extra], agentEnv);

/** A refused sync: its code, and not one byte of the disk file changed. */
async function refused(disk: string, code: string, extra: string[] = []): Promise<void> {
  const before = sha256(disk);
  const r = await sync(disk, extra);
  expect(r.code, r.stderr).toBe(1);
  expect(r.json?.error?.code, r.stderr).toBe(code);
  expect(sha256(disk)).toBe(before);
}

beforeAll(async () => {
  tmp = tempDir('df-signed-');
  srv = await startInProcess(f('data'), { now: () => new Date(Date.now() - skewMs) });
  proxy = await startProxy(srv.url);
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('v1.img'), 1);
  copyFileSync(f('v1.img'), f('v2.img'));
  patch(f('v2.img'), 4 * MiB, prng(7)(3 * MiB));
  copyFileSync(f('v2.img'), f('v3.img'));
  patch(f('v3.img'), 12 * MiB, prng(8)(1 * MiB));
  for (const v of [1, 2, 3]) imageSha[v] = sha256Prefix(f(`v${v}.img`), VS);
  expect((await cli(['image', 'create', 'win', '--from', f('v1.img')], admin)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'kiosk', '--image', 'win', '--mode', 'restore'], admin)).code).toBe(0);
  const token = (await cli(['desktop', 'token', 'kiosk'], admin)).stdout.trim();
  agentEnv = { DESKFUSE_SERVER: proxy.url, DESKFUSE_TOKEN: token };
});
afterAll(async () => {
  await proxy?.close();
  await srv?.close();
  tmp?.cleanup();
});

describe('signed versions through a tampering proxy', () => {
  let v1Head: string;

  it('a blank disk syncs to a signed version and records the key it trusts', async () => {
    proxy.hooks.onResponse = ({ url }, body) => {
      if (isHead(url)) v1Head = body.toString();
      return undefined;
    };
    const r = await sync(blankDisk('a.img'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ from: null, to: 1 });
    expect(sha256Prefix(f('a.img'), VS)).toBe(imageSha[1]);
    const keys = await cli(['key', 'show', '--json', '--trust-out', f('trust.json')], admin);
    const fh = await fsp.open(f('a.img'), 'r');
    const st = await readState(fh, DISK);
    await fh.close();
    expect(st?.trustKeys?.map((k) => keyIdOf(k))).toEqual([keys.json.keyId]);
    expect(st?.floor).toBe(1);
    // the manifest the server kept is the one it signed at commit
    const m = await fetch(`${srv.url}/api/v1/images/win/versions/1/manifest`, { headers: { authorization: `Bearer ${srv.token}` } }).then((x) => x.json());
    expect(JSON.parse(m.body)).toMatchObject({ type: 'manifest', image: 'win', version: 1, kind: 'import', keyId: keys.json.keyId });
  });

  it('refuses an index swapped for another valid version\'s (DF_ERR_SIG_MISMATCH)', async () => {
    expect((await cli(['image', 'publish', 'win', '--from', f('v2.img')], admin)).code).toBe(0);
    const v1Index = await adminBytes('/api/v1/images/win/versions/1/index');
    const v1 = await fetch(`${srv.url}/api/v1/images/win/versions/1`, { headers: { authorization: `Bearer ${srv.token}` } }).then((x) => x.json());
    proxy.hooks.onResponse = ({ url }, body) => {
      if (/\/versions\/2\/index/.test(url)) return { body: v1Index };
      if (/\/versions\/2$/.test(url.split('?')[0]!)) return { body: Buffer.from(JSON.stringify({ ...JSON.parse(body.toString()), index: v1.index })) };
      return undefined;
    };
    await refused(blankDisk('b.img'), 'DF_ERR_SIG_MISMATCH');
    // the provisioned disk takes the delta path: layers swapped for v1's make an index the manifest does not name
    const v1Layer = await adminBytes('/api/v1/images/win/versions/1/layer');
    proxy.hooks.onResponse = ({ url }, body) => {
      if (/\/versions\/2\/layer/.test(url)) return { body: v1Layer };
      if (/\/versions\?/.test(url)) {
        const list = JSON.parse(body.toString());
        for (const v of list.versions) if (v.version === 2) v.layer = v1.layer;
        return { body: Buffer.from(JSON.stringify(list)) };
      }
      return undefined;
    };
    // a copy with the original's mtime (cp -p): a new mtime would make it a disk changed since its seal
    copyFileSync(f('a.img'), f('a-copy.img'));
    const st = statSync(f('a.img'));
    utimesSync(f('a-copy.img'), st.atime, st.mtime);
    await refused(f('a-copy.img'), 'DF_ERR_SIG_MISMATCH');
  });

  it('moves on through an honest proxy', async () => {
    proxy.hooks.onResponse = undefined;
    const r = await sync(f('a.img'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ from: 1, to: 2 });
    expect(sha256Prefix(f('a.img'), VS)).toBe(imageSha[2]);
  });

  it('refuses a replayed older head (DF_ERR_SIG_DOWNGRADE)', async () => {
    proxy.hooks.onResponse = ({ url }) => (isHead(url) ? { body: Buffer.from(v1Head) } : undefined);
    await refused(f('a.img'), 'DF_ERR_SIG_DOWNGRADE');
  });

  it('refuses a frozen head: past its expiry, or older than --max-head-age (DF_ERR_SIG_STALE)', async () => {
    proxy.hooks.onResponse = undefined;
    skewMs = 2 * 86_400_000;
    try {
      await refused(f('a.img'), 'DF_ERR_SIG_STALE');
      skewMs = 2 * 3600_000;
      await refused(f('a.img'), 'DF_ERR_SIG_STALE', ['--max-head-age', '3600']);
    } finally {
      skewMs = 0;
    }
  });

  it('refuses a manifest forged with another key (DF_ERR_SIG_UNKNOWN_KEY), or claiming the real key (DF_ERR_SIG_INVALID)', async () => {
    const other = newSigningKey();
    const otherId = keyIdOf(rawPublicKey(other));
    const resign = (s: Signed, keyId: string) => ({ ...signStatement(other, otherId, JSON.parse(s.body) as StatementBody), keyId });
    onHead((a) => ({ ...a, head: resign(a.head, otherId), manifest: resign(a.manifest, otherId) }));
    await refused(f('a.img'), 'DF_ERR_SIG_UNKNOWN_KEY');
    onHead((a) => ({ ...a, manifest: resign(a.manifest, a.manifest.keyId) }));
    await refused(f('a.img'), 'DF_ERR_SIG_INVALID');
    // a new key that endorses itself is endorsed by nothing the disk trusts
    const selfEndorsed = signStatement(other, otherId, { type: 'endorse', key: rawPublicKey(other).toString('base64'), keyId: otherId, at: new Date().toISOString() });
    onHead((a) => ({ ...a, head: resign(a.head, otherId), manifest: resign(a.manifest, otherId), chain: { ...a.chain, endorsements: [...a.chain.endorsements, selfEndorsed] } }));
    await refused(f('a.img'), 'DF_ERR_SIG_UNKNOWN_KEY');
  });

  it('refuses stripped signatures (DF_ERR_SIG_MISSING): fields removed, or no signed head at all', async () => {
    onHead((a) => ({ ...a, head: { body: a.head.body, keyId: a.head.keyId }, manifest: { body: a.manifest.body } }));
    await refused(f('a.img'), 'DF_ERR_SIG_MISSING');
    proxy.hooks.onResponse = ({ url }) => (isHead(url) ? { body: Buffer.from('stripped') } : undefined);
    await refused(f('a.img'), 'DF_ERR_SIG_MISSING');
    await refused(blankDisk('c.img'), 'DF_ERR_SIG_MISSING');
  });

  it('a blank disk trusts its boot stage\'s trust file: the right key syncs, another is refused', async () => {
    proxy.hooks.onResponse = undefined;
    const stranger = rawPublicKey(newSigningKey());
    writeFileSync(f('stranger.json'), JSON.stringify({ version: 1, keys: [{ id: keyIdOf(stranger), ed25519: stranger.toString('base64') }] }));
    await refused(blankDisk('d.img'), 'DF_ERR_SIG_UNKNOWN_KEY', ['--trust', f('stranger.json')]);
    const r = await sync(f('d.img'), ['--trust', f('trust.json')]);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256Prefix(f('d.img'), VS)).toBe(imageSha[2]);
  });

  it('accepts an admin rollback: the ref moved back, signed', async () => {
    expect((await cli(['ref', 'set', 'win', 'main', '1', '--expect', '2'], admin)).code).toBe(0);
    const r = await sync(f('a.img'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ from: 2, to: 1 });
    expect(sha256Prefix(f('a.img'), VS)).toBe(imageSha[1]);
    // the boot stage's keys no longer matter once the disk holds its own: a stranger's trust file changes nothing
    expect((await cli(['ref', 'set', 'win', 'main', '2', '--expect', '1'], admin)).code).toBe(0);
    const back = await sync(f('a.img'), ['--trust', f('stranger.json')]);
    expect(back.code, back.stderr).toBe(0);
    expect(back.json).toMatchObject({ from: 1, to: 2 });
  });

  it('accepts a rotated key through the chain and records it on the disk', async () => {
    const old = (await cli(['key', 'show', '--json'], admin)).json.keyId as string;
    const rot = await cli(['key', 'rotate', '--json'], admin);
    expect(rot.code, rot.stderr).toBe(0);
    expect(rot.json.rotated).toEqual({ from: old, to: rot.json.keyId });
    expect(rot.json.chain.endorsements).toHaveLength(1);
    expect((await cli(['image', 'publish', 'win', '--from', f('v3.img')], admin)).code).toBe(0);
    const r = await sync(f('a.img'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ from: 2, to: 3 });
    expect(sha256Prefix(f('a.img'), VS)).toBe(imageSha[3]);
    const fh = await fsp.open(f('a.img'), 'r');
    const st = await readState(fh, DISK);
    await fh.close();
    expect(st?.trustKeys?.map((k) => keyIdOf(k))).toEqual([old, rot.json.keyId]);
    // versions signed before the rotation keep their first signature
    const m1 = await fetch(`${srv.url}/api/v1/images/win/versions/1/manifest`, { headers: { authorization: `Bearer ${srv.token}` } }).then((x) => x.json());
    expect(m1.keyId).toBe(old);
    expect(readFileSync(path.join(f('data'), 'keys', 'retired', `${old}.key`), 'utf8')).toMatch(/BEGIN PRIVATE KEY/);

    // image verify: with the first key only, version 3 verifies through the chain, version 1 directly; a stranger's key verifies nothing
    const v3 = await cli(['image', 'verify', 'win@3', '--trust', f('trust.json'), '--json'], admin);
    expect(v3.code, v3.stderr).toBe(0);
    expect(v3.json).toMatchObject({ version: 3, keyId: rot.json.keyId, viaChain: true });
    expect((await cli(['image', 'verify', 'win@1', '--trust', f('trust.json'), '--json'], admin)).json).toMatchObject({ version: 1, keyId: old, viaChain: false });
    expect((await cli(['image', 'verify', 'win@main', '--trust', f('stranger.json'), '--json'], admin)).json.error.code).toBe('DF_ERR_SIG_UNKNOWN_KEY');
  });
});
