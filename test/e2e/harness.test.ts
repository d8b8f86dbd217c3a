// Self-test of the e2e harness, no deskfuse server involved: a lab namespace, BIOS endpoints booting
// our own boot sector (directly, and after the NIC ROM's iPXE finds no DHCP server), and a UEFI
// endpoint whose OVMF output must reach the serial log. Runs as root; ~30–60 s under TCG.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { assertE2ePrerequisites, buildMbr, createLab, startVm, writeMbrDisk, type Lab, type Mbr, type Vm } from './harness/index.js';

const namespaces = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]);
/** A PID still running QEMU (guards against PID reuse by checking the command line). */
const qemuAlive = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system');
  } catch {
    return false;
  }
};
const tOf = (vm: Vm, name: string) => vm.marks.find((m) => m.name === name)?.t ?? NaN;

let lab: Lab;
let mbr: Mbr;
let failed = false;
const started: Vm[] = [];
const track = (vm: Vm) => (started.push(vm), vm);

beforeAll(async () => {
  assertE2ePrerequisites();
  lab = await createLab({ taps: 2, run: `harness-${new Date().toISOString().replace(/[:.]/g, '-')}` });
  mbr = await buildMbr(path.join(lab.dir, 'mbr'));
}, 30_000);

afterEach(({ task }) => {
  if (task.result?.state === 'fail') failed = true;
});

afterAll(async () => {
  await lab?.close({ removeLogs: !failed }); // idempotent; the last test closes it already
});

describe('e2e harness', () => {
  it('creates an isolated namespace: bridge with the server address, taps enslaved, no default route', async () => {
    expect(lab.name).toMatch(new RegExp(`^df-e2e-${process.pid}-\\d+$`));
    expect(namespaces()).toContain(lab.name);
    const addr = (await lab.exec('ip', ['-o', '-4', 'addr', 'show', 'dev', 'br0'])).stdout;
    expect(addr).toContain('10.91.0.1/24');
    const links = (await lab.exec('ip', ['-o', 'link', 'show', 'master', 'br0'])).stdout;
    expect(links).toContain(`${lab.tapFor(0)}:`);
    expect(links).toContain(`${lab.tapFor(1)}:`);
    expect((await lab.exec('ip', ['route', 'show', 'default'])).stdout.trim()).toBe('');
    expect(() => lab.tapFor(2)).toThrow(/2 taps/);
  });

  it('boots a BIOS disk with no network: MBR-BOOTED, QEMU exit status from isa-debug-exit', async () => {
    const disk = path.join(lab.dir, 'bios-mbr', 'disk.img');
    writeMbrDisk(disk, mbr);
    const vm = track(startVm({ lab, tap: null, firmware: 'bios', disk, mac: '52:54:00:91:00:01', name: 'bios-mbr', memMiB: 128, timeoutMs: 60_000 }));
    const m = await vm.waitFor('MBR-BOOTED');
    expect(m).toMatchObject({ pseudo: false, text: '(boot sector ran)' });
    expect(mbr.exitStatus).toBe(33); // (0x10 << 1) | 1
    expect(await vm.exited).toEqual({ code: 33, signal: null, killed: false, timedOut: false });
    expect(vm.marks.map((x) => x.name)).toEqual(['FW-SEABIOS', 'FW-BOOT-DISK', 'MBR-BOOTED']);
    expect(readFileSync(vm.serialLog, 'utf8')).toMatch(/^\+\d+\.\d{3} @@MARK MBR-BOOTED \(boot sector ran\)$/m);
  }, 90_000);

  it('BIOS network first with no DHCP server: iPXE tries, gives up, SeaBIOS boots the disk', async () => {
    const disk = path.join(lab.dir, 'bios-nodhcp', 'disk.img');
    writeMbrDisk(disk, mbr);
    const vm = track(startVm({ lab, tap: lab.tapFor(0), firmware: 'bios', disk, mac: '52:54:00:91:00:10', name: 'bios-nodhcp', timeoutMs: 150_000 }));
    await vm.waitFor('FW-IPXE');
    await vm.waitFor('FW-DHCP');
    await vm.waitFor('MBR-BOOTED');
    expect(await vm.exited).toMatchObject({ code: mbr.exitStatus, killed: false });
    const names = vm.marks.map((x) => x.name);
    for (const n of ['FW-SEABIOS', 'FW-IPXE', 'FW-DHCP', 'FW-DHCP-FAILED', 'FW-NO-NET', 'FW-BOOT-DISK', 'MBR-BOOTED']) expect(names).toContain(n);
    // order only, never wall-clock durations
    const seq = ['FW-SEABIOS', 'FW-IPXE', 'FW-DHCP', 'FW-DHCP-FAILED', 'FW-NO-NET', 'FW-BOOT-DISK', 'MBR-BOOTED'].map((n) => tOf(vm, n));
    expect(seq).toEqual([...seq].sort((a, b) => a - b));
  }, 170_000);

  it('UEFI with no NIC: OVMF writes to the serial log; the harness kills the VM', async () => {
    const vm = track(
      startVm({ lab, tap: null, firmware: 'uefi', disk: path.join(lab.dir, 'uefi-empty', 'disk.img'), diskSizeBytes: 16 * 1024 * 1024, mac: '52:54:00:91:00:02', name: 'uefi-empty', timeoutMs: 120_000 }),
    );
    const m = await vm.waitFor('FW-BDS');
    expect(m.text).toMatch(/^BdsDxe: /);
    const exit = await vm.kill();
    expect(exit).toMatchObject({ killed: true, timedOut: false });
    expect(readFileSync(vm.serialLog, 'utf8')).toContain('BdsDxe:');
    await expect(vm.waitFor('NEVER-PRINTED')).rejects.toThrow(/exited/);
  }, 140_000);

  it('close() deletes the namespace and leaves no QEMU it started running', async () => {
    const sleeper = lab.spawn('sleep', ['600'], { stdio: 'ignore' });
    const pids = [...started.map((v) => v.pid), sleeper.pid!];
    await lab.close({ removeLogs: !failed });
    await lab.close(); // idempotent
    expect(namespaces()).not.toContain(lab.name);
    for (const pid of pids) expect(qemuAlive(pid)).toBe(false);
    expect(sleeper.exitCode !== null || sleeper.signalCode !== null).toBe(true);
    expect(() => lab.spawn('true')).toThrow(/closed/);
  }, 30_000);
});

describe('e2e lab with two bridges', () => {
  it('puts 10.92.0.1/24 on br1, ULAs when asked, and cleans up', async () => {
    const lab2 = await createLab({ bridges: ['br0', 'br1'], taps: 1, ipv6Ula: true });
    try {
      const out = (await lab2.exec('ip', ['-o', 'addr', 'show'])).stdout;
      expect(out).toMatch(/br0\s+inet 10\.91\.0\.1\/24/);
      expect(out).toMatch(/br1\s+inet 10\.92\.0\.1\/24/);
      expect(out).toMatch(/br1\s+inet6 fd00:df:1::1\/64/);
      expect(lab2.tapFor(0, 'br1')).toBe('br1-tap0');
      expect(lab2.bridge('br1')).toMatchObject({ ip: '10.92.0.1', subnet: '10.92.0.0/24' });
    } finally {
      await lab2.close({ removeLogs: true });
    }
    expect(namespaces()).not.toContain(lab2.name);
  }, 30_000);
});
