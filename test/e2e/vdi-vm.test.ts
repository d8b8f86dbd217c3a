import { closeSync, copyFileSync, createReadStream, createWriteStream, existsSync, openSync, readdirSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireQemu } from '../helpers/qemu-boot.js';
import { CLI, ROOT, cli, tempDir } from '../helpers/server.js';
import { run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * VDI end to end with a real VM: `deskfuse vdi start` runs QEMU (TCG) on a session's NBD export of the test
 * OS; the OS boots (SeaBIOS → syslinux → Linux), writes its marker on the ext4 data partition and powers off;
 * QEMU's NBD client flushes and disconnects, and the server commits the session as a new version of the
 * desktop's line. A second session on the same desktop starts from that version: the OS finds its marker.
 * The appliance runs in this process: every child is asynchronous (execa), never execFileSync/spawnSync.
 */
const IMAGE = 'os';
const DESKTOP = 'vm1';
/** The marker the test OS writes when it has no NIC (--net none). */
const MARKER = 'no-nic';
/** One `vdi start` (boot, power-off, commit) must end well within this; nominal ~10–15 s under TCG (BIOS), ~30 s UEFI. */
const RUN_GUARD_MS = 200_000;
/** TCG unless DESKFUSE_E2E_ACCEL=kvm (as in the harness: KVM is unusable on the hosts here). */
const ACCEL = process.env.DESKFUSE_E2E_ACCEL || 'tcg';

let tmp: ReturnType<typeof tempDir>;
let srv: VdiAppliance;
let admin: Record<string, string>;
let fixtureDisk: string;
const f = (n: string) => path.join(tmp.dir, n);

interface Mark { name: string; detail: string }
interface VmRun {
  code: number | undefined;
  timedOut: boolean;
  seconds: number;
  stdout: string;
  stderr: string;
  marks: Mark[];
  result: { session: any; qemuExit: number | null } | undefined;
}

/** `@@MARK NAME rest…` lines of the serial console (the CLI's stdout, before its final JSON line). */
function parseMarks(serial: string): Mark[] {
  const marks: Mark[] = [];
  for (const l of serial.split('\n')) {
    const m = /@@MARK (\S+) ?(.*)$/.exec(l.replace(/\r/g, ''));
    if (m) marks.push({ name: m[1]!, detail: m[2]! });
  }
  return marks;
}
const mark = (r: VmRun, name: string) => r.marks.find((m) => m.name === name);
/** The marker names an OS-MARKERS line lists (its words but uptime=…). */
const listed = (r: VmRun) => (mark(r, 'OS-MARKERS')?.detail ?? '').split(/\s+/).filter((w) => w && !w.startsWith('uptime='));
/** For assertion messages: what the run printed, last part. */
const tail = (r: VmRun) => `exit ${r.code}${r.timedOut ? ' (TIMED OUT, killed)' : ''} after ${r.seconds.toFixed(1)} s\n--- stdout ---\n${r.stdout.slice(-3000)}\n--- stderr ---\n${r.stderr.slice(-2000)}`;

/** PIDs of live swtpm processes whose command line names `dir` (one left running by `vdi start` would be a leak). */
function swtpmsOn(dir: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (path.basename(cmd[0] ?? '') === 'swtpm' && cmd.some((a) => a.includes(dir))) pids.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return pids;
}

/** Is `pid` a live QEMU started with our pidfile? (So a leftover is killed by its PID, and only ours.) */
function ourQemu(pid: number, pidfile: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(pidfile);
  } catch {
    return false;
  }
}

/**
 * `deskfuse vdi start DESKTOP` with the serial console on stdout. The CLI runs in its own process group with
 * QEMU as its child: past RUN_GUARD_MS both are killed (the group, by its id). QEMU writes a pidfile, so a QEMU
 * that outlived its CLI is found and stopped too.
 */
async function vdiStart(name: string, flags: string[], desktop = DESKTOP): Promise<VmRun> {
  const pidfile = f(`${name}.qemu.pid`);
  const t0 = performance.now();
  const child = execa(process.execPath, [CLI, 'vdi', 'start', desktop, '--accel', ACCEL, '--net', 'none', '--memory', '256', '--cpus', '1',
    '--state-dir', f('vdi-state'), ...flags, '--wait-seconds', '30', '--json', '--', '-no-reboot', '-pidfile', pidfile],
  { env: { DESKFUSE_DATA: '/nonexistent', ...admin }, reject: false, stdin: 'ignore', detached: true });
  let timedOut = false;
  const guard = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }, RUN_GUARD_MS);
  const r = await child;
  clearTimeout(guard);
  const seconds = (performance.now() - t0) / 1000;
  if (existsSync(pidfile)) {
    const pid = Number(readFileSync(pidfile, 'utf8').trim());
    if (pid > 0 && ourQemu(pid, pidfile)) {
      process.kill(pid, 'SIGKILL');
      throw new Error(`qemu (pid ${pid}) was still running after its CLI exited; killed it\n${r.stderr}`);
    }
  }
  const stdout = String(r.stdout);
  const at = stdout.lastIndexOf('{"session":');
  let result: VmRun['result'];
  try {
    result = at >= 0 ? JSON.parse(stdout.slice(at)) : undefined;
  } catch {
    result = undefined;
  }
  const out: VmRun = { code: r.exitCode, timedOut, seconds, stdout, stderr: String(r.stderr), marks: parseMarks(at >= 0 ? stdout.slice(0, at) : stdout), result };
  console.log(`vdi start (${name}): ${out.seconds.toFixed(1)} s, exit ${out.code}; marks: ${out.marks.map((m) => `${m.name} ${m.detail}`).join(' | ')}`);
  return out;
}

/** Exports IMAGE@version to raw and returns the test OS marker file from its ext4 data partition (p2). */
async function markerIn(version: number, image = IMAGE): Promise<string> {
  const raw = f(`${image}-v${version}.raw`);
  expect((await cli(['image', 'export', `${image}@${version}`, '--to', raw], admin)).code).toBe(0);
  const mbr = Buffer.alloc(512);
  const fd = openSync(raw, 'r');
  readSync(fd, mbr, 0, 512, 0);
  closeSync(fd);
  expect(mbr.readUInt16LE(510)).toBe(0xaa55);
  const p2 = 446 + 16;
  expect(mbr[p2 + 4]).toBe(0x83);
  const start = mbr.readUInt32LE(p2 + 8) * 512;
  const length = mbr.readUInt32LE(p2 + 12) * 512;
  const part = f(`${image}-v${version}.p2`);
  await pipeline(createReadStream(raw, { start, end: start + length - 1 }), createWriteStream(part));
  return run('debugfs', ['-R', `cat /markers/${MARKER}`, part]);
}

beforeAll(async () => {
  requireQemu();
  if (ACCEL !== 'tcg' && ACCEL !== 'kvm') throw new Error(`DESKFUSE_E2E_ACCEL: expected tcg or kvm, received ${JSON.stringify(ACCEL)}`);
  if (spawnSync('debugfs', ['-V']).status !== 0) throw new Error('debugfs missing: bash scripts/setup-deps.sh (apt-get install e2fsprogs)');
  // The test OS (cached by its inputs; a first build downloads and packs a kernel).
  const dir = (await run('bash', [path.join(ROOT, 'test/fixtures/os/build.sh')], 300_000)).trim().split('\n').pop()!;
  fixtureDisk = path.join(dir, 'disk.img');
  tmp = tempDir('df-vdivm-');
  srv = await startVdiAppliance(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const img = await cli(['image', 'create', IMAGE, '--from', fixtureDisk, '-m', 'test OS'], admin);
  expect(img.code, img.stderr).toBe(0);
  const d = await cli(['desktop', 'create', DESKTOP, '--image', IMAGE], admin);
  expect(d.code, d.stderr).toBe(0);
}, 320_000);
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

describe('a VDI VM boots the test OS from a session export', () => {
  it('writes its marker and powers off; the session commits a new version of the desktop holding it', async () => {
    const r = await vdiStart('first', ['--firmware', 'bios']);
    expect(r.timedOut, tail(r)).toBe(false);
    expect(r.marks.map((m) => m.name), tail(r)).toEqual(expect.arrayContaining(['OS-BOOTED', 'OS-MARKERS', 'OS-MARKER-WRITTEN', 'OS-POWEROFF']));
    expect(mark(r, 'OS-BOOTED')!.detail).toContain('via=bios');
    expect(listed(r), tail(r)).toEqual([]);
    expect(mark(r, 'OS-MARKER-WRITTEN')!.detail).toContain(`${MARKER} count=1`);
    expect(r.code, tail(r)).toBe(0);
    expect(r.result?.qemuExit, tail(r)).toBe(0);
    expect(r.result!.session, tail(r)).toMatchObject({
      desktop: DESKTOP, image: IMAGE, base: 1, state: 'committed', lastDisconnect: 'clean', connections: 0,
      outcome: { kind: 'fast-forward', version: 2, ref: `desktops/${DESKTOP}`, by: 'disconnect' },
    });
    expect(r.result!.session.outcome.chunksChanged).toBeGreaterThan(0);

    expect((await cli(['desktop', 'show', DESKTOP, '--json'], admin)).json).toMatchObject({ ref: `desktops/${DESKTOP}`, head: 2, lease: null });
    const log = (await cli(['image', 'log', `${IMAGE}@desktops/${DESKTOP}`, '--json'], admin)).json;
    expect(log.versions[0]).toMatchObject({ version: 2, parent: 1, kind: 'vdi-commit' });
    expect((await cli(['image', 'log', `${IMAGE}@main`, '--json'], admin)).json.versions[0].version).toBe(1);

    const marker = await markerIn(2);
    expect(marker).toMatch(/^count=1$/m);
    expect(marker).toMatch(/^via=bios$/m);
  }, 260_000);

  it('a second session starts from that version: the OS finds its marker and counts on, version 3', async () => {
    const r = await vdiStart('second', ['--firmware', 'bios']);
    expect(r.timedOut, tail(r)).toBe(false);
    expect(r.marks.map((m) => m.name), tail(r)).toEqual(expect.arrayContaining(['OS-BOOTED', 'OS-MARKER-WRITTEN', 'OS-POWEROFF']));
    expect(listed(r), tail(r)).toEqual([MARKER]);
    expect(mark(r, 'OS-MARKER-WRITTEN')!.detail).toContain(`${MARKER} count=2`);
    expect(r.code, tail(r)).toBe(0);
    expect(r.result!.session, tail(r)).toMatchObject({
      base: 2, state: 'committed', outcome: { kind: 'fast-forward', version: 3, ref: `desktops/${DESKTOP}`, by: 'disconnect' },
    });
    expect((await cli(['desktop', 'show', DESKTOP, '--json'], admin)).json).toMatchObject({ head: 3, lease: null });
    expect(await markerIn(3)).toMatch(/^count=2$/m);
  }, 260_000);

  it('the same desktop boots UEFI (q35 + OVMF) with a TPM 2.0 from swtpm: its ESP\'s boot loader, the TPM seen by the OS, version 4', async () => {
    const state = f('vdi-state');
    const r = await vdiStart('uefi', ['--firmware', 'uefi', '--tpm']);
    expect(r.timedOut, tail(r)).toBe(false);
    expect(r.stderr, tail(r)).toMatch(/qemu \(tcg, UEFI, TPM 2\.0\)/);
    expect(r.marks.map((m) => m.name), tail(r)).toEqual(expect.arrayContaining(['OS-BOOTED', 'OS-PLATFORM', 'OS-MARKER-WRITTEN', 'OS-POWEROFF']));
    // The same disk as under BIOS: systemd-boot on its ESP (what a UEFI VOI endpoint's firmware starts too).
    expect(mark(r, 'OS-BOOTED')!.detail).toContain('via=uefi');
    expect(mark(r, 'OS-PLATFORM')!.detail, tail(r)).toMatch(/efi=yes tpm=2 secureboot=disabled/);
    expect(listed(r), tail(r)).toEqual([MARKER]);
    expect(mark(r, 'OS-MARKER-WRITTEN')!.detail).toContain(`${MARKER} count=3`);
    expect(r.code, tail(r)).toBe(0);
    expect(r.result!.session, tail(r)).toMatchObject({ base: 3, state: 'committed', outcome: { kind: 'fast-forward', version: 4, ref: `desktops/${DESKTOP}` } });
    const marker = await markerIn(4);
    expect(marker).toMatch(/^count=3$/m);
    expect(marker).toMatch(/^via=uefi$/m);
    expect(marker).toMatch(/^tpm=2$/m);

    // Kept on this host for the desktop: its variable store (OVMF wrote its boot options) and the TPM's state;
    // swtpm stopped with the VM, the lock released.
    const vars = path.join(state, DESKTOP, 'OVMF_VARS.fd');
    expect(statSync(vars).size).toBe(statSync('/usr/share/OVMF/OVMF_VARS_4M.fd').size);
    expect(readFileSync(vars).equals(readFileSync('/usr/share/OVMF/OVMF_VARS_4M.fd')), 'OVMF wrote nothing in the desktop\'s store').toBe(false);
    expect(statSync(path.join(state, DESKTOP, 'tpm', 'tpm2-00.permall')).size).toBeGreaterThan(0);
    expect(existsSync(path.join(state, DESKTOP, 'lock'))).toBe(false);
    expect(swtpmsOn(state)).toEqual([]);
  }, 260_000);

  it('Secure Boot (OVMF with Microsoft\'s keys, SMM) + TPM: the test OS behind Debian\'s signed shim and GRUB boots, its kernel sees Secure Boot on', async () => {
    // The same disk with a signed chain on its ESP: shim (Microsoft's UEFI CA) as the fallback boot loader,
    // Debian's signed GRUB beside it (shim's second stage), GRUB booting the test OS's Debian-signed kernel.
    const signed = JSON.parse((await run('bash', [path.join(ROOT, 'scripts/secureboot-files.sh')], 300_000)).trim().split('\n').pop()!) as { shim: string; grub: string };
    const grubDisk = path.join(path.dirname(signed.grub), 'grubx64.efi.signed');
    const disk = f('os-sb.img');
    copyFileSync(fixtureDisk, disk);
    const boot = JSON.parse(readFileSync(path.join(path.dirname(fixtureDisk), 'boot.json'), 'utf8')) as { cmdline: string };
    const cfg = f('grub.cfg');
    writeFileSync(cfg, `set timeout=0\nsearch --no-floppy --fs-uuid --set=root 0DF0-B007\nlinux /vmlinuz ${boot.cmdline.replace('deskfuse.via=kexec', 'deskfuse.via=shim')}\ninitrd /initrd.img\nboot\n`);
    const esp = `${disk}@@${1024 * 1024}`;
    const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
    await execa('mcopy', ['-o', '-i', esp, signed.shim, '::/EFI/BOOT/BOOTX64.EFI'], { env });
    await execa('mcopy', ['-o', '-i', esp, grubDisk, '::/EFI/BOOT/grubx64.efi'], { env });
    await execa('mmd', ['-i', esp, '::/EFI/debian'], { env });
    for (const dir of ['BOOT', 'debian']) await execa('mcopy', ['-o', '-i', esp, cfg, `::/EFI/${dir}/grub.cfg`], { env });
    expect((await cli(['image', 'create', 'os-sb', '--from', disk, '-m', 'test OS, signed chain'], admin)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'vm-sb', '--image', 'os-sb'], admin)).code).toBe(0);

    const r = await vdiStart('secureboot', ['--secure-boot', '--tpm', '--memory', '768'], 'vm-sb'); // 256 MiB: the EFI stub cannot decompress the kernel
    expect(r.timedOut, tail(r)).toBe(false);
    expect(r.stderr, tail(r)).toMatch(/qemu \(tcg, UEFI with Secure Boot, TPM 2\.0\)/);
    expect(mark(r, 'OS-BOOTED')?.detail, tail(r)).toContain('via=shim');
    expect(mark(r, 'OS-PLATFORM')!.detail, tail(r)).toMatch(/efi=yes tpm=2 secureboot=enabled/);
    expect(mark(r, 'OS-MARKER-WRITTEN')?.detail, tail(r)).toContain(`${MARKER} count=1`);
    expect(r.code, tail(r)).toBe(0);
    expect(r.result!.session, tail(r)).toMatchObject({ desktop: 'vm-sb', state: 'committed', outcome: { kind: 'fast-forward', version: 2 } });
    expect(await markerIn(2, 'os-sb')).toMatch(/^via=shim$/m);
    // Its own variable store, made from the Microsoft-keys template; the plain one of vm1 untouched by it.
    expect(statSync(path.join(f('vdi-state'), 'vm-sb', 'OVMF_VARS.secboot.fd')).size).toBe(statSync('/usr/share/OVMF/OVMF_VARS_4M.ms.fd').size);
    expect(existsSync(path.join(f('vdi-state'), 'vm-sb', 'OVMF_VARS.fd'))).toBe(false);
    expect(swtpmsOn(f('vdi-state'))).toEqual([]);
  }, 600_000);
});
