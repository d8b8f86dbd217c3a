import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireQemu } from '../helpers/qemu-boot.js';
import { CLI, cli, tempDir } from '../helpers/server.js';
import { fails, requireNbdClients, run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * VDI with the server's NBD in TLS `required` mode: the API hands out nbds:// URLs; a session's writes
 * made over TLS (qemu-io) land and commit; plaintext is refused; `deskfuse vdi start` runs QEMU with
 * tls-creds-x509 on a tiny boot sector that copies itself to sector 1 through the BIOS and resets
 * (-no-reboot ends QEMU), so the VM's own write, over TLS, is in the committed version; the libvirt
 * domain asks for TLS. The appliance runs in this process: children are asynchronous (execa).
 */
const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let srv: VdiAppliance;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);
const MARK = Buffer.from('deskfuse-nbd-tls-vm-write-marker');

/**
 * 16-bit boot sector: int 13h AH=03 writes this very sector (ES:BX = 0:7C00) to CHS 0/0/2 (LBA 1) of
 * the boot drive (DL from the BIOS), then an empty IDT makes `int3` triple-fault: a reset.
 */
function bootSector(): Buffer {
  const code = [
    0xfa, // cli
    0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, // xor ax,ax; mov ds,ax; mov es,ax; mov ss,ax
    0xbc, 0x00, 0x7c, // mov sp,0x7c00
    0xb8, 0x01, 0x03, // mov ax,0x0301 (write 1 sector)
    0xb9, 0x02, 0x00, // mov cx,0x0002 (cylinder 0, sector 2)
    0xb6, 0x00, // mov dh,0
    0xbb, 0x00, 0x7c, // mov bx,0x7c00
    0xfb, 0xcd, 0x13, 0xfa, // sti; int 0x13; cli
    0x0f, 0x01, 0x1e, 0x24, 0x7c, // lidt [0x7c24]
    0xcc, 0xeb, 0xfe, 0x90, // int3; jmp $; nop
    0, 0, 0, 0, 0, 0, // 0x7c24: IDT limit 0, base 0
  ];
  const b = Buffer.alloc(512);
  Buffer.from(code).copy(b, 0);
  MARK.copy(b, 0x100);
  b.writeUInt16LE(0xaa55, 510);
  return b;
}

/** The first `n` bytes of IMAGE@VERSION, read over TLS with nbdcopy. */
async function head(spec: string, n: number): Promise<Buffer> {
  const out = f(`${spec.replace(/\W/g, '_')}.raw`);
  await run('nbdcopy', [`nbds://127.0.0.1:${srv.nbdPort}/${spec}:${srv.token}?tls-certificates=${srv.caDir}`, out]);
  const b = Buffer.alloc(n);
  const fd = openSync(out, 'r');
  readSync(fd, b, 0, n, 0);
  closeSync(fd);
  return b;
}

const openSessions = async () => ((await cli(['vdi', 'session', 'list', '--json'], admin)).json as { sessions: { id: string; state: string }[] }).sessions;

beforeAll(async () => {
  requireQemu();
  requireNbdClients();
  tmp = tempDir('df-vditls-');
  srv = await startVdiAppliance(f('data'), { nbdTls: 'required' });
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const disk = Buffer.alloc(4 * MiB);
  bootSector().copy(disk, 0);
  writeFileSync(f('boot.img'), disk);
  expect((await cli(['image', 'create', 'boot', '--from', f('boot.img')], admin)).code).toBe(0);
  for (const d of ['vm1', 'io1']) expect((await cli(['desktop', 'create', d, '--image', 'boot'], admin)).code).toBe(0);
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('VDI over NBD with TLS required', () => {
  it('a session URL is nbds://; qemu-io writes over TLS commit; plaintext is refused', async () => {
    const made = await cli(['vdi', 'session', 'create', 'io1', '--json'], admin);
    expect(made.code, made.stderr).toBe(0);
    const { url, session } = made.json as { url: string; session: string };
    expect(url).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/session\/[0-9a-f]{10}:dfv_/);
    const exportName = decodeURIComponent(new URL(url).pathname.slice(1));
    expect((await cli(['vdi', 'session', 'show', session, '--json'], admin)).json.url).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/session\/[0-9a-f]{10}$/);
    const plain = await fails('qemu-io', ['-f', 'raw', '-c', 'read 0 512', url.replace(/^nbds:/, 'nbd:')]);
    expect(plain.status).not.toBe(0);
    expect(plain.stderr).toMatch(/TLS/);
    const opts = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${srv.nbdPort},export=${exportName},tls-creds=tls0`;
    const out = await run('qemu-io', ['--object', `tls-creds-x509,id=tls0,dir=${srv.caDir},endpoint=client`, '--image-opts', opts,
      '-c', 'write -P 0x6b 1048576 65536', '-c', 'flush']);
    expect(out).toMatch(/wrote 65536\/65536/);
    let s: { state: string; outcome?: { version: number } } | undefined;
    for (let i = 0; i < 200 && s?.state !== 'committed'; i++) {
      s = (await cli(['vdi', 'session', 'show', session, '--json'], admin)).json;
      if (s?.state !== 'committed') await new Promise((r) => setTimeout(r, 50));
    }
    expect(s).toMatchObject({ state: 'committed', outcome: { kind: 'fast-forward' } });
    const v = (await head(`boot@${s!.outcome!.version}`, 2 * MiB)).subarray(MiB, MiB + 65536);
    expect(v.every((b) => b === 0x6b)).toBe(true);
  });

  it('vdi start without --tls-dir is refused with the option to give, and takes no session', async () => {
    const r = await cli(['vdi', 'start', 'vm1', '--accel', 'tcg', '--net', 'none', '--json'], admin);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--tls-dir DIR with DIR\/ca-cert\.pem/);
    expect((await openSessions()).filter((x) => x.state === 'open')).toEqual([]);
    const bad = await cli(['vdi', 'start', 'vm1', '--tls-dir', f('nowhere')], admin);
    expect(bad.stderr).toMatch(/--tls-dir: .*ca-cert\.pem is not readable/);
  });

  it('--print-libvirt-xml asks libvirt for TLS on the NBD disk', async () => {
    const r = await cli(['vdi', 'start', 'vm1', '--print-libvirt-xml'], admin);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/<source protocol='nbd' name='session\/[0-9a-f]{10}:dfv_[^']+' tls='yes'>/);
    expect(r.stderr).toMatch(/nbd_tls_x509_cert_dir/);
    for (const s of await openSessions()) expect((await cli(['vdi', 'session', 'discard', s.id], admin)).code).toBe(0);
  });

  it('vdi start --tls-dir: the VM boots from the export over TLS and its write lands in the committed version', async () => {
    const r = await execa(process.execPath, [CLI, 'vdi', 'start', 'vm1', '--accel', 'tcg', '--net', 'none', '--memory', '64', '--cpus', '1', '--firmware', 'bios',
      '--tls-dir', srv.caDir!, '--wait-seconds', '30', '--json', '--', '-no-reboot'],
    { env: { DESKFUSE_DATA: '/nonexistent', ...admin }, reject: false, stdin: 'ignore', timeout: 120_000 });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    const result = JSON.parse(r.stdout.slice(r.stdout.lastIndexOf('{"session":'))) as { session: { state: string; outcome: { kind: string; version: number } } };
    expect(result.session).toMatchObject({ state: 'committed', outcome: { kind: 'fast-forward' } });
    const disk = await head(`boot@${result.session.outcome.version}`, 1024);
    expect(disk.subarray(512, 1024).equals(bootSector())).toBe(true);
    expect(disk.subarray(512 + 0x100, 512 + 0x100 + MARK.length).equals(MARK)).toBe(true);
  });
});
