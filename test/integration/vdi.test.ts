import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseDisk, patch, prng, sha256, textish } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';
import { desktopUuid } from '../../src/vdi/launch.js';
import { fails, requireNbdClients, run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * VDI over NBD against real clients (qemu-img, qemu-io, nbdinfo, nbdcopy): read-only version exports,
 * a writable session, its commit, and the fusion round trip with a VOI disk synced by the agent.
 */
const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let tmp: ReturnType<typeof tempDir>;
let srv: VdiAppliance;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const img = (spec: string) => srv.nbdUrl(`${spec}:${srv.token}`);
const rand = prng(23);

/** sha256 of the first `n` bytes of a file (a VOI disk: the image region, then its state area). */
function headSha(file: string, n = SIZE): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(MiB);
  for (let off = 0; off < n; off += MiB) h.update(buf.subarray(0, readSync(fd, buf, 0, Math.min(MiB, n - off), off)));
  closeSync(fd);
  return h.digest('hex');
}

const vdi = (args: string[]) => cli(['vdi', ...args, '--json'], admin);
async function createSession(desktop: string, extra: string[] = []) {
  const r = await vdi(['session', 'create', desktop, ...extra]);
  expect(r.code, r.stderr).toBe(0);
  return r.json as { session: string; export: string; url: string; base: number; fencing: number | null };
}
const show = async (id: string) => (await vdi(['session', 'show', id])).json;

/** Waits for a session to leave `open`/`committing` (auto-commit runs right after the client's disconnect). */
async function settled(id: string) {
  for (let i = 0; i < 200; i++) {
    const s = await show(id);
    if (s.state === 'committed' || s.state === 'discarded') return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`session ${id} did not settle`);
}

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-vdi-');
  srv = await startVdiAppliance(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  baseDisk(f('base.img'));
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin)).code).toBe(0);
  for (const d of ['alice', 'bob', 'carol']) expect((await cli(['desktop', 'create', d, '--image', 'win'], admin)).code).toBe(0);
  expect((await cli(['desktop', 'create', 'kiosk', '--image', 'win', '--mode', 'restore'], admin)).code).toBe(0);
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('read-only version exports', () => {
  it('qemu-img info / convert / compare and nbdcopy serve IMAGE@REF and IMAGE@VERSION byte-exact', async () => {
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', img('win@main')]));
    expect(info['virtual-size']).toBe(SIZE);
    await run('qemu-img', ['convert', '-O', 'raw', img('win@main'), f('conv.raw')]);
    expect(sha256(f('conv.raw'))).toBe(sha256(f('base.img')));
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', f('base.img'), img('win@1')]);
    await run('nbdcopy', [img('win@1'), f('copy.raw')]);
    expect(sha256(f('copy.raw'))).toBe(sha256(f('base.img')));
  });

  it('nbdinfo --map reports the zero chunks as holes, so clients skip them', async () => {
    const map = JSON.parse(await run('nbdinfo', ['--map', '--json', img('win@main')])) as Array<{ offset: number; length: number; type: number }>;
    expect(map.reduce((s, e) => s + e.length, 0)).toBe(SIZE);
    const at = (off: number) => map.find((e) => e.offset <= off && off < e.offset + e.length)!;
    expect(at(0).type & 1).toBe(0); // data at 0
    expect(at(14 * MiB).type).toBe(3); // hole|zero where the base disk has nothing
    expect(at(20 * MiB).type & 1).toBe(0);
  });

  it('needs a token: none, a wrong one, another image\'s desktop token are refused; a desktop token of the image reads', async () => {
    expect((await fails('qemu-img', ['info', srv.nbdUrl('win@main')])).status).not.toBe(0);
    expect((await fails('qemu-img', ['info', srv.nbdUrl('win@main:dfa_wrong')])).status).not.toBe(0);
    const t = (await cli(['desktop', 'token', 'carol'], admin)).stdout.trim();
    expect(JSON.parse(await run('qemu-img', ['info', '--output=json', srv.nbdUrl(`win@main:${t}`)]))['virtual-size']).toBe(SIZE);
    // Listing carries no credentials: refused unless the server opens image exports to anonymous reads.
    const l = await fails('nbdinfo', ['--list', srv.nbdUrl('')]);
    expect(l.status).not.toBe(0);
    expect(l.stderr).toMatch(/replied with error to list request/);
  });

  it('refuses unknown exports and writes to a read-only one, and keeps serving', async () => {
    const u = await fails('qemu-img', ['info', img('nope@main')]);
    expect(u.status).not.toBe(0);
    expect(u.stderr).toMatch(/not available|unknown|no export/i);
    expect((await fails('qemu-img', ['info', img('win@99')])).status).not.toBe(0);
    const w = await fails('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4096', img('win@main')]);
    expect(`${w.stderr}`).toMatch(/read-only|not permitted|Permission/i);
    expect(JSON.parse(await run('qemu-img', ['info', '--output=json', img('win@main')]))['virtual-size']).toBe(SIZE);
  });
});

describe('VDI sessions', () => {
  it('qemu-io writes odd sizes and offsets into a session; its clean disconnect commits a vdi-commit version', async () => {
    const s = await createSession('alice');
    expect(s.url).toBe(srv.nbdUrl(s.export));
    expect(s.export).toMatch(/^session\/[0-9a-f]{10}:dfv_/);
    const out = await run('qemu-io', ['-f', 'raw',
      '-c', 'write -P 0xab 1000 3333', '-c', 'write -P 0xcd 5000001 70001', '-c', 'write -z 2097152 65536',
      '-c', 'read -P 0xab 1000 3333', '-c', 'read -P 0xcd 5000001 70001', '-c', 'read -P 0 2097152 65536', '-c', 'flush', s.url]);
    expect(out).not.toMatch(/Pattern verification failed|error/i);
    const done = await settled(s.session);
    expect(done.outcome).toMatchObject({ kind: 'fast-forward', version: 2, ref: 'desktops/alice', by: 'disconnect' });
    const v = (await cli(['image', 'log', 'win@desktops/alice', '--json'], admin)).json;
    expect(v.versions[0]).toMatchObject({ version: 2, parent: 1, kind: 'vdi-commit' });
    // The version holds exactly the base plus those writes.
    const model = readFileSync(f('base.img'));
    model.fill(0xab, 1000, 1000 + 3333);
    model.fill(0xcd, 5000001, 5000001 + 70001);
    model.fill(0, 2097152, 2097152 + 65536);
    writeFileSync(f('alice-model.raw'), model);
    await run('nbdcopy', [img('win@desktops/alice'), f('alice-v2.raw')]);
    expect(sha256(f('alice-v2.raw'))).toBe(sha256(f('alice-model.raw')));
    // A committed session is gone as an export.
    expect((await fails('qemu-img', ['info', s.url])).status).not.toBe(0);
    expect((await show(s.session)).state).toBe('committed');
  });

  it('needs its secret: without it, or with another session\'s, nothing is written', async () => {
    const a = await createSession('bob', ['--no-auto-commit']);
    const id = a.session;
    expect((await fails('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 512', srv.nbdUrl(`session/${id}`)])).status).not.toBe(0);
    expect((await fails('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 512', srv.nbdUrl(`session/${id}:dfv_not-the-secret`)])).status).not.toBe(0);
    expect((await show(id)).increment.changed).toBe(0);
    // nbdinfo on the session (read, no writes) leaves it open; an admin discards it and the lease is free again.
    const j = JSON.parse(await run('nbdinfo', ['--json', a.url]));
    expect(j.exports[0]['export-size']).toBe(SIZE);
    expect(j.exports[0]['is_read_only']).toBe(false);
    expect((await show(id)).state).toBe('open');
    expect((await vdi(['session', 'discard', id])).json.state).toBe('discarded');
    const d = (await cli(['desktop', 'show', 'bob', '--json'], admin)).json;
    expect(d.lease).toBeNull();
    expect(d.head).toBe(1);
  });

  it('a restore desktop\'s session is writable and discarded when the VM disconnects: nothing is committed', async () => {
    const s = await createSession('kiosk');
    expect(s.fencing).toBeNull();
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 9 0 4096', s.url]);
    const done = await settled(s.session);
    expect(done.state).toBe('discarded');
    expect(done.outcome).toMatchObject({ kind: 'discarded', version: null, by: 'disconnect' });
    expect((await cli(['ref', 'list', 'win', '--json'], admin)).json.refs.find((r: { name: string }) => r.name === 'main').version).toBe(1);
  });
});

describe('the fusion round trip (VDI ↔ VOI)', () => {
  it('VDI commit → VOI sync equals the VDI view; VOI commit → a new VDI session reads it; the lease is refused while VOI holds it, forced keeps both lines', async () => {
    const token = (await cli(['desktop', 'token', 'carol'], admin)).stdout.trim();
    const agent = (args: string[]) => cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });

    // 1. VDI: the session writes, the VM shuts down (clean disconnect) → version on desktops/carol.
    const s1 = await createSession('carol');
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 123457 77777', '-c', 'write -z 8388608 1048576', '-c', 'flush', s1.url]);
    const o1 = (await settled(s1.session)).outcome;
    expect(o1.kind).toBe('fast-forward');
    await run('nbdcopy', [img(`win@${o1.version}`), f('vdi-view.raw')]);

    // 2. VOI: a blank disk synced by the agent equals the VDI view byte for byte.
    execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), f('voi.img')]);
    const sync = await agent(['sync', '--disk', f('voi.img'), '--desktop', 'carol']);
    expect(sync.code, sync.stderr).toBe(0);
    expect(sync.json.to).toBe(o1.version);
    expect(headSha(f('voi.img'))).toBe(sha256(f('vdi-view.raw')));
    expect((await agent(['handoff', '--disk', f('voi.img')])).code).toBe(0); // the desktop OS boots on it

    // 3. The VOI agent holds the lease (the desktop runs there): a VDI session is refused, naming it.
    const refused = await vdi(['session', 'create', 'carol']);
    expect(refused.code).toBe(1);
    expect(refused.json.error.code).toBe('DF_ERR_LEASE_HELD');
    expect(refused.json.error.holder).toMatch(/^agent:/);
    expect(refused.stderr).toContain('held by agent:');

    // 4. The VOI desktop changes, commits at shutdown (lease released) → a new VDI session reads it.
    const local = textish(rand, 200_000);
    patch(f('voi.img'), 3 * MiB + 4321, local);
    const c = await agent(['commit', '--disk', f('voi.img')]);
    expect(c.code, c.stderr).toBe(0);
    const s2 = await createSession('carol');
    expect(c.json.committed).toBe(true);
    expect(s2.base).toBe(c.json.version);
    await run('nbdcopy', [s2.url, f('vdi-sees.raw')]); // reads only: no commit on disconnect
    expect(sha256(f('vdi-sees.raw'))).toBe(headSha(f('voi.img')));
    expect((await show(s2.session)).state).toBe('open');

    // 5. Forced: the VOI endpoint syncs again and holds the lease; the VDI session started with --force
    //    takes it over. Both then change and commit: the VDI commit moves the ref, the VOI one is kept
    //    as a conflict version. Nothing is lost: both lines export what each side wrote.
    expect((await vdi(['session', 'discard', s2.session])).code).toBe(0);
    const sync2 = await agent(['sync', '--disk', f('voi.img'), '--desktop', 'carol']);
    expect(sync2.code, sync2.stderr).toBe(0);
    expect((await agent(['handoff', '--disk', f('voi.img')])).code).toBe(0);
    const s3 = await createSession('carol', ['--force']);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 10000000 50000', '-c', 'flush', s3.url]);
    const o3 = (await settled(s3.session)).outcome;
    expect(o3.kind).toBe('fast-forward');
    patch(f('voi.img'), 25 * MiB, Buffer.alloc(40_000, 0x44));
    const c2 = await agent(['commit', '--disk', f('voi.img')]);
    expect(c2.code).toBe(3); // kept as a conflict
    const conflictRef = c2.json.conflict.conflictRef as string;
    expect(conflictRef).toMatch(/^conflicts\/desktops\/carol\//);
    await run('nbdcopy', [img(`win@${conflictRef}`), f('voi-line.raw')]);
    expect(sha256(f('voi-line.raw'))).toBe(headSha(f('voi.img')));
    await run('nbdcopy', [img('win@desktops/carol'), f('vdi-line.raw')]);
    const vdiLine = readFileSync(f('vdi-line.raw'));
    expect(vdiLine.subarray(10000000, 10050000).equals(Buffer.alloc(50000, 0x33))).toBe(true);
    expect(vdiLine.subarray(3 * MiB + 4321, 3 * MiB + 4321 + local.length).equals(local)).toBe(true);
  });
});

describe('CLI and API', () => {
  it('lists sessions, shows one, refuses bad ids and a commit of a committed session with coded errors', async () => {
    const l = await vdi(['session', 'list', '--all']);
    expect(l.code).toBe(0);
    expect(l.json.sessions.length).toBeGreaterThanOrEqual(4);
    const bad = await vdi(['session', 'show', 'nope']);
    expect(bad.code).toBe(1);
    expect(bad.json.error.code).toBe('DF_ERR_BAD_REQUEST');
    const missing = await vdi(['session', 'show', '0123456789']);
    expect(missing.json.error.code).toBe('DF_ERR_VDI_SESSION_NOT_FOUND');
    const committed = l.json.sessions.find((s: { state: string }) => s.state === 'committed');
    const again = await vdi(['session', 'discard', committed.id]);
    expect(again.json.error.code).toBe('DF_ERR_VDI_SESSION_STATE');
    const unknownDesktop = await vdi(['session', 'create', 'nobody']);
    expect(unknownDesktop.json.error.code).toBe('DF_ERR_DESKTOP_NOT_FOUND');
  });

  it('prints a libvirt domain whose disk is the session\'s NBD export', async () => {
    const r = await cli(['vdi', 'start', 'bob', '--print-libvirt-xml', '--accel', 'tcg', '--memory', '512'], admin);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/<source protocol='nbd' name='session\/[0-9a-f]{10}:dfv_[^']+'>/);
    expect(r.stdout).toContain(`<host name='127.0.0.1' port='${srv.nbdPort}'/>`);
    // Well-formed XML, read by a real parser.
    writeFileSync(f('dom.xml'), r.stdout);
    expect((await run('python3', ['-c', 'import sys,xml.dom.minidom as m; d=m.parse(sys.argv[1]); print(d.documentElement.tagName)', f('dom.xml')])).trim()).toBe('domain');
    const id = /session\/([0-9a-f]{10})/.exec(r.stdout)![1]!;
    expect((await vdi(['session', 'discard', id])).code).toBe(0);
  });

  it('a Windows 11 domain: q35, UEFI with Secure Boot, a TPM 2.0, SATA + e1000e, the desktop\'s uuid; libvirt\'s schema accepts it', async () => {
    const r = await cli(['vdi', 'start', 'bob', '--print-libvirt-xml', '--accel', 'kvm', '--secure-boot', '--tpm', '--disk-bus', 'sata', '--nic-model', 'e1000e', '--vnc', ':0', '--net', 'user'], admin);
    expect(r.code, r.stderr).toBe(0);
    for (const x of ["machine='q35'", "<feature enabled='yes' name='secure-boot'/>", "<smm state='on'/>", "<tpm model='tpm-crb'>", "bus='sata'", "<model type='e1000e'/>",
      `<uuid>${desktopUuid('bob')}</uuid>`, '<nvram>/var/lib/libvirt/qemu/nvram/deskfuse-bob-secboot_VARS.fd</nvram>', "<cpu mode='host-passthrough'/>"]) expect(r.stdout).toContain(x);
    writeFileSync(f('win11.xml'), r.stdout);
    expect((await run('virt-xml-validate', [f('win11.xml'), 'domain'])).trim()).toBe('');
    const id = /session\/([0-9a-f]{10})/.exec(r.stdout)![1]!;
    expect((await vdi(['session', 'discard', id])).code).toBe(0);
  });

  it('firmware options are checked before a session is made: --secure-boot needs UEFI, names are checked', async () => {
    const before = (await vdi(['session', 'list'])).json.sessions.length;
    const sb = await cli(['vdi', 'start', 'bob', '--firmware', 'bios', '--secure-boot', '--accel', 'tcg'], admin);
    expect(sb.code).not.toBe(0);
    expect(sb.stderr).toContain('--secure-boot needs --firmware uefi');
    for (const [opt, bad] of [['--firmware', 'efi'], ['--disk-bus', 'ide'], ['--nic-model', 'rtl8139']] as const) {
      const x = await cli(['vdi', 'start', 'bob', opt, bad, '--accel', 'tcg'], admin);
      expect(x.code, opt).not.toBe(0);
      expect(x.stderr).toContain(`${opt}: expected`);
    }
    expect((await vdi(['session', 'list'])).json.sessions.length).toBe(before);
  });
});

describe('anonymous read', () => {
  it('with --nbd-anonymous-read, nbdinfo --list lists the image refs and reads need no token; sessions still do', async () => {
    const t2 = tempDir('df-vdi-anon-');
    const s2 = await startVdiAppliance(path.join(t2.dir, 'data'), { anonymousRead: true });
    try {
      const a = { DESKFUSE_SERVER: s2.url, DESKFUSE_TOKEN: s2.token };
      copyFileSync(f('base.img'), path.join(t2.dir, 'b.img'));
      expect((await cli(['image', 'create', 'lab', '--from', path.join(t2.dir, 'b.img')], a)).code).toBe(0);
      const list = JSON.parse(await run('nbdinfo', ['--list', '--json', s2.nbdUrl('')]));
      expect(list.exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['lab@main']);
      expect(list.exports[0].is_read_only).toBe(true);
      await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(t2.dir, 'b.img'), s2.nbdUrl('lab@main')]);
      expect((await cli(['desktop', 'create', 'd', '--image', 'lab'], a)).code).toBe(0);
      const s = (await cli(['vdi', 'session', 'create', 'd', '--json'], a)).json;
      expect((await fails('qemu-io', ['-f', 'raw', '-c', 'write 0 512', s2.nbdUrl(s.export.split(':')[0])])).status).not.toBe(0);
    } finally {
      await s2.close();
      t2.cleanup();
    }
  });
});
