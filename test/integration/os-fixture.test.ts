import { execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootQemu, ISOLATED_NIC, markNames, OVMF_CODE, OVMF_VARS, ovmfArgs, requireQemu, type BootResult } from '../helpers/qemu-boot.js';

// The test OS that e2e tests sync to endpoints: its disk layout, and that it boots from the disk under
// SeaBIOS (syslinux) and OVMF (systemd-boot), keeps its markers across boots and powers off by itself
// when the commit-at-shutdown hook cannot reach a server.
const ROOT = path.resolve(import.meta.dirname, '../..');
const MiB = 1024 * 1024;
let tmp: string;
let fixture: string;
let disk: string;

interface Part { active: boolean; type: number; start: number; sectors: number }
function mbr(file: string): { parts: Part[]; signature: number; bootCode: Buffer } {
  const b = Buffer.alloc(512);
  const fd = openSync(file, 'r');
  readSync(fd, b, 0, 512, 0);
  closeSync(fd);
  const parts = [0, 1, 2, 3].map((i) => {
    const o = 446 + i * 16;
    return { active: b[o] === 0x80, type: b[o + 4]!, start: b.readUInt32LE(o + 8), sectors: b.readUInt32LE(o + 12) };
  });
  return { parts, signature: b.readUInt16LE(510), bootCode: b.subarray(0, 440) };
}
const nicMac = '52:54:00:0d:f0:01';
const bootDisk = (firmwareArgs: string[], log: string): Promise<BootResult> =>
  bootQemu([...firmwareArgs, '-m', '512', '-drive', `file=${disk},format=raw,if=none,id=d0`, '-device', 'virtio-blk-pci,drive=d0,bootindex=1', ...ISOLATED_NIC(nicMac)],
    180_000, path.join(tmp, log));
/** The marker names an OS-MARKERS line lists (its words but uptime=…). */
const listed = (r: BootResult) => (r.marks.find((m) => m.name === 'OS-MARKERS')?.detail ?? '').split(/\s+/).filter((w) => w && !w.startsWith('uptime='));
const summary = (r: BootResult) => `${r.marks.map((m) => `${m.name}@${m.t.toFixed(1)}s`).join(' ')}; exit after ${r.seconds.toFixed(1)} s`;

beforeAll(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'df-osfix-'));
  fixture = execFileSync('bash', [path.join(ROOT, 'test/fixtures/os/build.sh')], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 })
    .toString().trim().split('\n').pop()!;
  disk = path.join(tmp, 'disk.img');
  copyFileSync(path.join(fixture, 'disk.img'), disk);
}, 320_000);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('test OS fixture', () => {
  it('has an MBR with syslinux code, an active ESP and an ext4 data partition', () => {
    const size = 96 * MiB;
    expect(readFileSync(path.join(fixture, 'disk.img')).length).toBe(size);
    const m = mbr(disk);
    expect(m.signature).toBe(0xaa55);
    expect(m.bootCode.equals(readFileSync('/usr/lib/syslinux/mbr/mbr.bin').subarray(0, 440))).toBe(true);
    const [p1, p2, p3, p4] = m.parts;
    expect(p1).toMatchObject({ active: true, type: 0xef, start: 2048 });
    expect(p2).toMatchObject({ active: false, type: 0x83, start: p1!.start + p1!.sectors });
    expect((p2!.start + p2!.sectors) * 512).toBe(size);
    expect(p3!.type).toBe(0);
    expect(p4!.type).toBe(0);

    const fat = `${disk}@@${p1!.start * 512}`;
    const mdir = (dir: string) => execFileSync('mdir', ['-i', fat, '-a', '-b', dir], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } }).toString();
    const top = mdir('::/');
    for (const f of ['vmlinuz', 'initrd.img', 'syslinux.cfg', 'ldlinux.sys']) expect(top).toContain(`::/${f}`);
    expect(mdir('::/EFI/BOOT')).toContain('BOOTX64.EFI');
    expect(mdir('::/loader/entries')).toContain('os.conf');
    const entry = execFileSync('mtype', ['-i', fat, '::/loader/entries/os.conf'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } }).toString();
    expect(entry).toMatch(/^linux \/vmlinuz$/m);
    expect(entry).toMatch(/^initrd \/initrd\.img$/m);

    const part2 = path.join(tmp, 'p2.img');
    execFileSync('dd', [`if=${disk}`, `of=${part2}`, 'bs=512', `skip=${p2!.start}`, `count=${p2!.sectors}`, 'status=none']);
    expect(execFileSync('debugfs', ['-R', 'ls /', part2], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toMatch(/markers/);
    expect(execFileSync('debugfs', ['-R', 'cat /os-release', part2], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toContain('deskfuse test OS');
    expect(execFileSync('e2label', [part2]).toString().trim()).toBe('DFDATA');

    const bootJson = JSON.parse(readFileSync(path.join(fixture, 'boot.json'), 'utf8'));
    expect(bootJson).toMatchObject({ partition: 1, kernel: '/vmlinuz', initrd: '/initrd.img' });
    expect(bootJson.cmdline).toContain('deskfuse.via=kexec');
  });

  it('boots from the disk under SeaBIOS, writes its marker, and sees it on the next boot', async () => {
    requireQemu();
    const marker = nicMac.replace(/:/g, '-');
    const first = await bootDisk([], 'bios1.log');
    console.log(`test OS, BIOS boot 1: ${summary(first)}`);
    expect(first.timedOut, first.serial.slice(-2000)).toBe(false);
    expect(markNames(first)).toEqual(expect.arrayContaining(['OS-BOOTED', 'OS-MARKERS', 'OS-MARKER-WRITTEN', 'OS-POWEROFF']));
    expect(first.marks.find((m) => m.name === 'OS-BOOTED')!.detail).toContain('via=bios');
    expect(listed(first)).toEqual([]);
    expect(first.marks.find((m) => m.name === 'OS-MARKER-WRITTEN')!.detail).toContain(`${marker} count=1`);
    expect(first.serial).toMatch(/deskfuse: .*powering off/); // the hook gave up on the server, bounded

    const second = await bootDisk([], 'bios2.log');
    console.log(`test OS, BIOS boot 2: ${summary(second)}`);
    expect(listed(second), second.serial.slice(-2000)).toContain(marker);
    expect(second.marks.find((m) => m.name === 'OS-MARKER-WRITTEN')!.detail).toContain(`${marker} count=2`);
  }, 400_000);

  it('boots from the disk under OVMF through systemd-boot', async () => {
    requireQemu(OVMF_CODE, OVMF_VARS);
    const r = await bootDisk(ovmfArgs(path.join(tmp, 'vars.fd')), 'uefi.log');
    console.log(`test OS, UEFI boot: ${summary(r)}`);
    expect(r.timedOut, r.serial.slice(-2000)).toBe(false);
    expect(r.marks.find((m) => m.name === 'OS-BOOTED')?.detail, r.serial.slice(-2000)).toContain('via=uefi');
    expect(markNames(r)).toEqual(expect.arrayContaining(['OS-MARKER-WRITTEN', 'OS-POWEROFF']));
  }, 240_000);
});
