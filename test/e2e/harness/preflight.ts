// Checks the e2e prerequisites and fails with the command that fixes them (never a silent skip).
import { accessSync, constants } from 'node:fs';
import path from 'node:path';

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
/** Secure Boot: the secure-boot build and a variable store with Microsoft's keys enrolled (Debian's ovmf). */
export const OVMF_CODE_MS = '/usr/share/OVMF/OVMF_CODE_4M.ms.fd';
export const OVMF_VARS_MS = '/usr/share/OVMF/OVMF_VARS_4M.ms.fd';

const TOOLS: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  ip: 'iproute2',
  as: 'binutils',
  ld: 'binutils',
};
const FILES: Record<string, string> = {
  [OVMF_CODE]: 'ovmf',
  [OVMF_VARS]: 'ovmf',
  [OVMF_CODE_MS]: 'ovmf',
  [OVMF_VARS_MS]: 'ovmf',
  '/usr/lib/ipxe/qemu/efi-virtio.rom': 'ipxe-qemu',
  '/usr/lib/ipxe/qemu/efi-e1000.rom': 'ipxe-qemu',
  '/dev/net/tun': '(kernel tun module: modprobe tun)',
};

function onPath(bin: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    try {
      accessSync(path.join(dir, bin), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

/** Throws one error listing every missing prerequisite (root, binaries, firmware files). */
export function assertE2ePrerequisites(): void {
  const problems: string[] = [];
  const pkgs = new Set<string>();
  if (process.getuid?.() !== 0) problems.push('e2e tests create network namespaces and tap devices: run them as root');
  for (const [bin, pkg] of Object.entries(TOOLS)) {
    if (!onPath(bin)) {
      problems.push(`${bin} not found`);
      pkgs.add(pkg);
    }
  }
  for (const [file, pkg] of Object.entries(FILES)) {
    try {
      accessSync(file, constants.R_OK);
    } catch {
      problems.push(`${file} missing`);
      if (!pkg.startsWith('(')) pkgs.add(pkg);
    }
  }
  if (problems.length === 0) return;
  const fix = pkgs.size ? `\nfix: apt-get install --no-install-recommends ${[...pkgs].join(' ')}` : '';
  throw new Error(`e2e prerequisites missing:\n  ${problems.join('\n  ')}${fix}`);
}
