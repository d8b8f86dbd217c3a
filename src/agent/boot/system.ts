import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { dfError } from '../../errors.js';
import type { ImageBoot } from '../../api/schemas.js';
import { bootNextValue, EFI_GLOBAL, findDiskOption, parseLoadOption, pciChainOfSysfs, type LoadOption } from './efi.js';

/**
 * What the boot stage does to the machine: find the disk, reboot, power off, kexec, BootNext.
 * Linux only (it runs in the initramfs); every external command is busybox or kexec-tools.
 */
const run = (cmd: string, args: string[]): { ok: boolean; out: string } => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim() };
};

export const isUefi = (): boolean => existsSync('/sys/firmware/efi');

/**
 * Reboot, power-off, kexec and BootNext act on the machine: only inside the boot stage, whose /init
 * sets DESKFUSE_BOOT_STAGE=1. Anywhere else (a test, an admin trying the agent on a server) they refuse.
 */
export function mustBeBootStage(what: string): void {
  if (process.env.DESKFUSE_BOOT_STAGE !== '1') {
    throw dfError('DF_ERR_USAGE', `not in the deskfuse boot stage (DESKFUSE_BOOT_STAGE is not 1): refusing to ${what} this machine`, { action: what });
  }
}

/** The boot stage loads efivarfs and the filesystem modules in the background (initramfs/init). */
function waitForModules(): void {
  if (!existsSync('/init')) return; // not in the boot stage
  for (let i = 0; i < 100 && !existsSync('/run/deskfuse-modules-done'); i++) spawnSync('sleep', ['0.1']);
}

/** The first fixed, non-removable whole disk (virtio, SCSI/SATA, NVMe, Xen), or the override. */
export function findDisk(override?: string): string {
  if (override) {
    if (!existsSync(override)) throw dfError('DF_ERR_FILE_UNREADABLE', `deskfuse.disk=${override} does not exist`, { disk: override });
    return override;
  }
  const names = existsSync('/sys/block') ? readdirSync('/sys/block').filter((n) => /^(vd[a-z]+|sd[a-z]+|nvme\d+n\d+|xvd[a-z]+|hd[a-z]+)$/.test(n)).sort() : [];
  const fixed = names.filter((n) => {
    try {
      return readFileSync(`/sys/block/${n}/removable`, 'utf8').trim() === '0' && Number(readFileSync(`/sys/block/${n}/size`, 'utf8')) > 0;
    } catch {
      return false;
    }
  });
  const pick = fixed[0];
  if (!pick) throw dfError('DF_ERR_FILE_UNREADABLE', `no local disk found (saw: ${names.join(', ') || 'none'}); is the storage driver in the initramfs?`, { seen: names });
  return `/dev/${pick}`;
}

/** /dev/vda + 1 → /dev/vda1; /dev/nvme0n1 + 1 → /dev/nvme0n1p1. */
export function partitionDevice(disk: string, n: number): string {
  return /\d$/.test(disk) ? `${disk}p${n}` : `${disk}${n}`;
}

export function syncDisks(): void {
  run('sync', []);
}

/** Immediate reset / power-off: the data is already fsynced (the kernel's sysrq path needs no init). */
export function reboot(): never {
  mustBeBootStage('reboot');
  syncDisks();
  try { writeFileSync('/proc/sysrq-trigger', 'b'); } catch { run('reboot', ['-f']); }
  process.exit(0);
}

export function powerOff(): never {
  mustBeBootStage('power off');
  syncDisks();
  try { writeFileSync('/proc/sysrq-trigger', 'o'); } catch { run('poweroff', ['-f']); }
  process.exit(0);
}

export type Lockdown = 'none' | 'integrity' | 'confidentiality';

/**
 * Secure Boot as this kernel sees it: the firmware's SecureBoot variable (UEFI spec §3.3: 1 byte after
 * efivarfs's 4 attribute bytes; null on BIOS or when unreadable) and the kernel lockdown mode
 * (/sys/kernel/security/lockdown, "none [integrity] confidentiality"; Debian's kernel locks down to
 * integrity when booted with Secure Boot on). securityfs is mounted here when /init did not.
 */
export function secureBootState(): { enabled: boolean | null; lockdown: Lockdown | null } {
  waitForModules();
  let enabled: boolean | null = null;
  try {
    const v = readFileSync(`/sys/firmware/efi/efivars/SecureBoot-${EFI_GLOBAL}`);
    if (v.length >= 5) enabled = v[4] === 1;
  } catch { /* BIOS, or efivarfs not mounted */ }
  const file = '/sys/kernel/security/lockdown';
  if (!existsSync(file) && existsSync('/sys/kernel/security') && process.env.DESKFUSE_BOOT_STAGE === '1') run('mount', ['-t', 'securityfs', 'securityfs', '/sys/kernel/security']);
  let lockdown: Lockdown | null = null;
  try {
    const m = /\[(none|integrity|confidentiality)\]/.exec(readFileSync(file, 'utf8'));
    if (m) lockdown = m[1] as Lockdown;
  } catch { /* no securityfs or no lockdown LSM */ }
  return { enabled, lockdown };
}

/**
 * Load the image's own kernel from its boot partition (mounted read-only) for a `kexecExec`. Under
 * lockdown `kexec_load` is refused (the kernel cannot check what the loader copies in); `kexec -s`
 * (`kexec_file_load`) hands the kernel the file, which it accepts when its signature verifies against
 * the keys it trusts (Debian's kernels: Debian's Secure Boot CA, shim's MokListRT): used then.
 */
export function kexecLoad(disk: string, boot: ImageBoot): { syscall: 'kexec_file_load' | 'kexec_load' } {
  mustBeBootStage('kexec');
  const dev = partitionDevice(disk, boot.partition);
  const mnt = '/run/deskfuse-boot';
  mkdirSync(mnt, { recursive: true });
  // The kernel read the partition table before the sync wrote it (a blank disk has none): read it again.
  if (!existsSync(dev)) run('blockdev', ['--rereadpt', disk]);
  for (let i = 0; i < 30 && !existsSync(dev); i++) spawnSync('sleep', ['0.1']);
  waitForModules();
  const m = run('mount', ['-o', 'ro', dev, mnt]);
  if (!m.ok) throw dfError('DF_ERR_TOOL_FAILED', `mount ${dev}: ${m.out}`, { device: dev });
  const kernel = path.join(mnt, boot.kernel);
  const locked = (secureBootState().lockdown ?? 'none') !== 'none';
  const args = [...(locked ? ['-s'] : []), '-l', kernel, `--append=${boot.cmdline}`];
  if (boot.initrd) args.push(`--initrd=${path.join(mnt, boot.initrd)}`);
  const l = run('kexec', args);
  run('umount', [mnt]);
  if (!l.ok) throw dfError('DF_ERR_TOOL_FAILED', `kexec ${locked ? '-s ' : ''}-l ${boot.kernel}: ${l.out}`, { kernel: boot.kernel, lockdown: locked });
  return { syscall: locked ? 'kexec_file_load' : 'kexec_load' };
}

/** Jump into the loaded kernel; returns only by throwing. */
export function kexecExec(): never {
  mustBeBootStage('kexec');
  syncDisks();
  const e = run('kexec', ['-e']);
  throw dfError('DF_ERR_TOOL_FAILED', `kexec -e: ${e.out}`);
}

/** UEFI: point BootNext at the firmware's boot option for this disk; returns the option used. */
export function setBootNextToDisk(disk: string): { num: number; description: string } {
  mustBeBootStage('write BootNext on');
  const dir = '/sys/firmware/efi/efivars';
  waitForModules();
  if (!existsSync(dir)) throw dfError('DF_ERR_TOOL_FAILED', 'efivarfs is not mounted at /sys/firmware/efi/efivars');
  const pci = pciChainOfSysfs(realpathSync(`/sys/block/${path.basename(disk)}`));
  const options: Array<{ num: number; option: LoadOption }> = [];
  for (const f of readdirSync(dir).filter((n) => /^Boot[0-9A-F]{4}-/.test(n) && n.endsWith(EFI_GLOBAL))) {
    try {
      options.push({ num: parseInt(f.slice(4, 8), 16), option: parseLoadOption(readFileSync(path.join(dir, f)).subarray(4)) });
    } catch {
      // a malformed option is not ours to judge; skip it
    }
  }
  options.sort((a, b) => a.num - b.num);
  const hit = findDiskOption(options, pci);
  if (!hit) throw dfError('DF_ERR_TOOL_FAILED', `no UEFI boot option boots the disk at PCI ${pci.join('/')} (have: ${options.map((o) => o.option.description).join(', ')})`, { pci });
  const file = path.join(dir, `BootNext-${EFI_GLOBAL}`);
  if (existsSync(file)) run('chattr', ['-i', file]); // efivarfs marks existing variables immutable
  writeFileSync(file, bootNextValue(hit.num));
  return { num: hit.num, description: hit.option.description };
}
