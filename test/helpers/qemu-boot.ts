import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, writeFileSync } from 'node:fs';

/** One `@@MARK NAME ...` line of a guest's serial console, with seconds since QEMU started. */
export interface Mark {
  name: string;
  detail: string;
  t: number;
}

export interface BootResult {
  serial: string;
  marks: Mark[];
  seconds: number;
  exitCode: number | null;
  timedOut: boolean;
}

/** Fails with the install command when QEMU (or a firmware file) is missing: never a silent skip. */
export function requireQemu(...files: string[]): void {
  const q = spawnSync('qemu-system-x86_64', ['--version']);
  if (q.status !== 0) throw new Error('qemu-system-x86_64 missing: bash scripts/setup-deps.sh (apt-get install qemu-system-x86 ovmf)');
  for (const f of files) if (!existsSync(f)) throw new Error(`${f} missing: apt-get install ovmf`);
}

/** TCG always: this host's KVM (kvm_pvm) cannot run these guests (see shared/notes/pxe-e2e-findings.md). */
export const QEMU_BASE = ['-accel', 'tcg', '-cpu', 'max', '-display', 'none', '-vga', 'none', '-nodefaults', '-no-user-config', '-no-reboot', '-monitor', 'none', '-serial', 'stdio'];

/** A NIC on a QEMU hub with nothing else on it: the guest has a link and a MAC, but no network. */
export const ISOLATED_NIC = (mac: string) => ['-netdev', 'hubport,id=n0,hubid=0', '-device', `virtio-net-pci,netdev=n0,mac=${mac},romfile=`];

/** UEFI firmware (OVMF): read-only code + a private copy of the variable store in `dir`. */
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
export function ovmfArgs(varsCopy: string): string[] {
  copyFileSync(OVMF_VARS, varsCopy);
  return ['-M', 'q35', '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,unit=1,file=${varsCopy}`];
}

/** Runs QEMU until it exits (the guest powers off or reboots with -no-reboot) or `timeoutMs` passes. */
export function bootQemu(args: string[], timeoutMs: number, logFile?: string): Promise<BootResult> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const q = spawn('qemu-system-x86_64', [...QEMU_BASE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let serial = '';
    let pending = '';
    let stderr = '';
    const marks: Mark[] = [];
    q.stdout.on('data', (d: Buffer) => {
      const t = (performance.now() - t0) / 1000;
      const text = d.toString('latin1');
      serial += text;
      pending += text;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const l of lines) {
        const m = /@@MARK (\S+) ?(.*)$/.exec(l.replace(/\r/g, ''));
        if (m) marks.push({ name: m[1]!, detail: m[2]!, t });
      }
    });
    q.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      q.kill('SIGKILL');
    }, timeoutMs);
    q.once('error', reject);
    q.once('exit', (code) => {
      clearTimeout(timer);
      if (logFile) writeFileSync(logFile, serial + (stderr ? `\n--- qemu stderr ---\n${stderr}` : ''));
      resolve({ serial, marks, seconds: (performance.now() - t0) / 1000, exitCode: code, timedOut });
    });
  });
}

/** Names of the marks in order, for readable assertions. */
export const markNames = (r: BootResult) => r.marks.map((m) => m.name);
