// A 512-byte BIOS boot sector for harness tests: prints "@@MARK <mark> <text>" on COM1 (port 0x3f8)
// and ends QEMU through isa-debug-exit (port 0xf4), so QEMU exits with status (exitValue << 1) | 1.
// Assembled at test time with GNU as/ld (binutils); no server involved.
import { closeSync, existsSync, fstatSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { debugExitStatus } from './qemu.js';

export interface MbrOptions {
  /** Mark name (default MBR-BOOTED). */
  mark?: string;
  /** Rest of the mark line. */
  text?: string;
  /** Byte written to isa-debug-exit (default 0x10 → QEMU exit status 33). */
  exitValue?: number;
}

export interface Mbr {
  /** The 512-byte sector (ends 55 AA). */
  bytes: Buffer;
  mark: string;
  /** QEMU's exit status once the sector has run. */
  exitStatus: number;
}

function source(mark: string, text: string, exitValue: number): string {
  const msg = `\\r\\n@@MARK ${mark}${text ? ` ${text}` : ''}\\r\\n`;
  return `.code16
.globl _start
_start:
  cli
  xor %ax, %ax
  mov %ax, %ds
  mov $msg, %si
  mov $0x3f8, %dx          # COM1 data port (QEMU's UART needs no set-up to transmit)
1:
  lodsb
  test %al, %al
  jz 2f
  out %al, %dx
  jmp 1b
2:
  mov $0xf4, %dx           # isa-debug-exit: QEMU exits with status (value << 1) | 1
  mov $${exitValue}, %al
  out %al, %dx
3:
  hlt                      # not reached when isa-debug-exit is present
  jmp 3b
msg:
  .asciz "${msg}"
  .org 510                 # fails to assemble if the code and message outgrow the sector
  .byte 0x55, 0xaa
`;
}

/** Assembles the boot sector in `workDir` (as --32; ld -m elf_i386 -Ttext 0x7c00 --oformat binary). */
export async function buildMbr(workDir: string, opts: MbrOptions = {}): Promise<Mbr> {
  const mark = opts.mark ?? 'MBR-BOOTED';
  const text = opts.text ?? '(boot sector ran)';
  const exitValue = opts.exitValue ?? 0x10;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]*$/.test(mark)) throw new Error(`mark: expected [A-Za-z0-9_.:-]+, received ${JSON.stringify(mark)}`);
  if (!/^[ -~]*$/.test(text) || /["\\]/.test(text)) throw new Error(`text: expected printable ASCII without quotes or backslashes, received ${JSON.stringify(text)}`);
  if (!Number.isInteger(exitValue) || exitValue < 0 || exitValue > 255) throw new Error(`exitValue: expected 0..255, received ${exitValue}`);
  mkdirSync(workDir, { recursive: true });
  const s = path.join(workDir, 'mbr.S');
  const o = path.join(workDir, 'mbr.o');
  const bin = path.join(workDir, 'mbr.bin');
  writeFileSync(s, source(mark, text, exitValue));
  await execa('as', ['--32', '-o', o, s]);
  await execa('ld', ['-m', 'elf_i386', '-Ttext', '0x7c00', '--oformat', 'binary', '-o', bin, o]);
  const bytes = readFileSync(bin);
  if (bytes.length !== 512 || bytes[510] !== 0x55 || bytes[511] !== 0xaa) throw new Error(`${bin}: expected a 512-byte boot sector ending 55 AA, got ${bytes.length} bytes`);
  return { bytes, mark, exitStatus: debugExitStatus(exitValue) };
}

/** Writes the boot sector at offset 0 of a raw disk image (created or grown to sizeBytes, never shrunk). */
export function writeMbrDisk(disk: string, mbr: Mbr, sizeBytes = 1024 * 1024): void {
  mkdirSync(path.dirname(disk), { recursive: true });
  const fd = openSync(disk, existsSync(disk) ? 'r+' : 'w+');
  try {
    writeSync(fd, mbr.bytes, 0, 512, 0);
    if (fstatSync(fd).size < sizeBytes) ftruncateSync(fd, sizeBytes);
  } finally {
    closeSync(fd);
  }
}
