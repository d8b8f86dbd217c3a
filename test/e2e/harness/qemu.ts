// One QEMU endpoint inside a lab namespace: BIOS (SeaBIOS) or UEFI (OVMF), q35, one vCPU, a raw disk
// on virtio-blk, a NIC on one of the lab's taps with the NIC ROM's iPXE (or OVMF's own PXE client),
// and COM1 on QEMU's stdout, which the harness reads, renders and stamps (see serial.ts).
//
// Files, in the VM's directory (default <lab.dir>/<name>/): serial.log (rendered lines, "+12.345 text"),
// serial.raw (the exact bytes), qemu.cmd, qemu.stderr.log, marks.json (at exit), OVMF_VARS.fd (UEFI).
//
// Exits: the guest may reboot (sync → reboot → local boot), a guest poweroff ends QEMU with status 0,
// and a write of v to port 0xf4 (isa-debug-exit) ends it with status (v << 1) | 1.
import { type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, createWriteStream, existsSync, mkdirSync, openSync, statSync, writeFileSync, ftruncateSync } from 'node:fs';
import path from 'node:path';
import type { Lab } from './netns.js';
import { OVMF_CODE, OVMF_CODE_MS, OVMF_VARS, OVMF_VARS_MS } from './preflight.js';
import { MarkParser, SerialScreen, type Mark, type PseudoMarkPattern, PSEUDO_MARKS } from './serial.js';

export type { Mark } from './serial.js';

export interface ExtraNic {
  tap: string;
  mac: string;
  nic?: 'virtio' | 'e1000';
}

export interface StartVmOptions {
  lab: Lab;
  /** Tap for the boot NIC (lab.tapFor(i)); omit or null for no network at all (-nic none). */
  tap?: string | null;
  firmware: 'bios' | 'uefi';
  /** Raw disk image. Created sparse when missing and diskSizeBytes is given; grown (never shrunk) to diskSizeBytes. */
  disk: string;
  diskSizeBytes?: number;
  /** Boot NIC MAC, e.g. 52:54:00:91:00:10. */
  mac: string;
  /** Endpoint name: QEMU -name and the log directory name. */
  name: string;
  /** Default: env DESKFUSE_E2E_ACCEL, else 'tcg' (KVM is unusable on the kvm_pvm hosts here). */
  accel?: 'tcg' | 'kvm';
  /** Guest RAM, default 768 (the sync initramfs unpacks ~96 MB and runs node). */
  memMiB?: number;
  nic?: 'virtio' | 'e1000';
  /** 'rom': the NIC ROM's iPXE (default); 'native': UEFI only, OVMF's own PXE (romfile=''); 'off': no network boot. */
  pxe?: 'rom' | 'native' | 'off';
  /** Default 'network-first' (NIC bootindex=1, disk bootindex=2). '*-only' add -boot strict=on. */
  bootOrder?: 'network-first' | 'disk-first' | 'disk-only' | 'network-only';
  /** Default <lab.dir>/<name>/serial.log; the VM's other files go beside it. */
  serialLog?: string;
  /** The VM is killed after this long (default 300 s); `exited` then reports timedOut. */
  timeoutMs?: number;
  /** More NICs (no boot index), e.g. on a second bridge. */
  extraNics?: ExtraNic[];
  /** Pseudo-mark patterns (default PSEUDO_MARKS); pass [...PSEUDO_MARKS, own] to extend. */
  patterns?: readonly PseudoMarkPattern[];
  /** Appended to QEMU's arguments as is. */
  extraArgs?: string[];
  /**
   * UEFI only: Secure Boot on. OVMF's secure-boot build with Microsoft's keys enrolled (…_4M.ms.fd),
   * SMM (so the variable store cannot be written around the firmware), and OVMF's own signed PXE
   * (pxe 'native': the NIC's unsigned iPXE ROM would be refused).
   */
  secureBoot?: boolean;
}

export interface VmExit {
  /** QEMU's exit status (0 after a guest poweroff or our SIGTERM; (v<<1)|1 after isa-debug-exit). */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The harness stopped it (kill() or close), rather than the guest. */
  killed: boolean;
  timedOut: boolean;
}

export interface SerialLineRecord {
  t: number;
  text: string;
}

export interface WaitOptions {
  /** Only a mark that comes after this one (e.g. the second boot's FW-IPXE). */
  after?: Mark;
}

export interface Vm {
  readonly name: string;
  readonly mac: string;
  readonly pid: number;
  /** The VM's directory (serial.log and friends). */
  readonly dir: string;
  readonly serialLog: string;
  /** Wall-clock time (epoch ms) of the QEMU start, t = 0 of marks; for aligning server events. */
  readonly startedAt: number;
  readonly args: readonly string[];
  readonly marks: readonly Mark[];
  readonly lines: readonly SerialLineRecord[];
  /**
   * The first mark (already seen or to come) whose name equals `what`, or, for a RegExp, whose
   * "NAME text" matches. Rejects after timeoutMs (default: until the VM's own timeout) or when QEMU
   * exits first, with the tail of the serial log in the message.
   */
  waitFor(what: string | RegExp, timeoutMs?: number, opts?: WaitOptions): Promise<Mark>;
  /** Like waitFor, for any completed serial line matching `re`. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<SerialLineRecord>;
  /** Resolves (never rejects) when QEMU has exited and its output is read. */
  readonly exited: Promise<VmExit>;
  /** SIGTERM (SIGKILL after 3 s) by PID; resolves with the exit. Idempotent. */
  kill(): Promise<VmExit>;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function defaultAccel(): 'tcg' | 'kvm' {
  const a = process.env.DESKFUSE_E2E_ACCEL;
  if (a === undefined || a === '') return 'tcg';
  if (a === 'tcg' || a === 'kvm') return a;
  throw new Error(`DESKFUSE_E2E_ACCEL: expected tcg or kvm, received ${JSON.stringify(a)}`);
}

function nicDevice(kind: 'virtio' | 'e1000'): string {
  return kind === 'virtio' ? 'virtio-net-pci' : 'e1000';
}

function prepareDisk(disk: string, size: number | undefined): void {
  if (size !== undefined && (!Number.isSafeInteger(size) || size < 512)) throw new Error(`diskSizeBytes: expected an integer >= 512, received ${size}`);
  if (!existsSync(disk)) {
    if (size === undefined) throw new Error(`disk: ${disk} does not exist (pass diskSizeBytes to create it)`);
    mkdirSync(path.dirname(disk), { recursive: true });
    writeFileSync(disk, '');
  }
  if (size !== undefined && statSync(disk).size < size) {
    const fd = openSync(disk, 'r+');
    try {
      ftruncateSync(fd, size);
    } finally {
      closeSync(fd);
    }
  }
}

/** QEMU's arguments for `o` (no side effects but the files named in `files`). */
function qemuArgs(o: StartVmOptions, dir: string, accel: 'tcg' | 'kvm'): string[] {
  const pxe = o.pxe ?? 'rom';
  const order = o.bootOrder ?? 'network-first';
  const hasNet = o.tap !== undefined && o.tap !== null;
  const netBoots = hasNet && pxe !== 'off' && order !== 'disk-only';
  const netIndex = !netBoots ? null : order === 'disk-first' ? 2 : 1;
  const diskIndex = order === 'network-only' && netBoots ? null : order === 'disk-first' || !netBoots ? 1 : 2;
  const a = [
    '-name', o.name,
    '-accel', accel, '-cpu', accel === 'tcg' ? 'max' : 'host',
    '-M', o.secureBoot ? 'q35,smm=on' : 'q35', '-m', String(o.memMiB ?? 768), '-smp', '1',
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-monitor', 'none',
    '-serial', 'stdio',
    '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
    '-drive', `file=${o.disk},if=none,id=disk0,format=raw`,
    '-device', `virtio-blk-pci,drive=disk0${diskIndex === null ? '' : `,bootindex=${diskIndex}`}`,
  ];
  if (hasNet) {
    // romfile= (empty): no option ROM — OVMF's own PXE on UEFI, or no network boot at all
    const rom = pxe === 'rom' && netBoots ? '' : ',romfile=';
    a.push('-netdev', `tap,id=net0,ifname=${o.tap},script=no,downscript=no`);
    a.push('-device', `${nicDevice(o.nic ?? 'virtio')},netdev=net0,mac=${o.mac}${netIndex === null ? '' : `,bootindex=${netIndex}`}${rom}`);
  } else {
    a.push('-nic', 'none');
  }
  (o.extraNics ?? []).forEach((n, i) => {
    a.push('-netdev', `tap,id=net${i + 1},ifname=${n.tap},script=no,downscript=no`);
    a.push('-device', `${nicDevice(n.nic ?? 'virtio')},netdev=net${i + 1},mac=${n.mac},romfile=`);
  });
  if (order === 'disk-only' || order === 'network-only') a.push('-boot', 'strict=on');
  if (o.firmware === 'bios') {
    // SeaBIOS "sercon": mirror the BIOS text console — and with it iPXE's output — onto COM1 (0x3f8)
    const sercon = path.join(dir, 'sercon-port.bin');
    writeFileSync(sercon, Buffer.from([0xf8, 0x03]));
    a.push('-fw_cfg', `name=etc/sercon-port,file=${sercon}`);
  } else {
    const vars = path.join(dir, 'OVMF_VARS.fd');
    copyFileSync(o.secureBoot ? OVMF_VARS_MS : OVMF_VARS, vars);
    if (o.secureBoot) a.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
    a.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${o.secureBoot ? OVMF_CODE_MS : OVMF_CODE}`);
    a.push('-drive', `if=pflash,format=raw,unit=1,file=${vars}`);
  }
  a.push(...(o.extraArgs ?? []));
  return a;
}

function validate(o: StartVmOptions): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(o.name)) throw new Error(`name: expected [A-Za-z0-9_.-]+, received ${JSON.stringify(o.name)}`);
  if (!MAC_RE.test(o.mac)) throw new Error(`mac: expected lower-case aa:bb:cc:dd:ee:ff, received ${JSON.stringify(o.mac)}`);
  if (o.firmware !== 'bios' && o.firmware !== 'uefi') throw new Error(`firmware: expected bios or uefi, received ${JSON.stringify(o.firmware)}`);
  if (o.secureBoot && (o.firmware !== 'uefi' || (o.pxe ?? 'rom') === 'rom')) throw new Error("secureBoot: needs firmware 'uefi' and pxe 'native' or 'off' (the NIC ROM's iPXE is unsigned)");
  if (o.pxe === 'native' && o.firmware !== 'uefi') throw new Error("pxe: 'native' needs firmware 'uefi' (SeaBIOS has no PXE client of its own)");
  if (o.memMiB !== undefined && (!Number.isInteger(o.memMiB) || o.memMiB < 64)) throw new Error(`memMiB: expected an integer >= 64, received ${o.memMiB}`);
  for (const n of o.extraNics ?? []) if (!MAC_RE.test(n.mac)) throw new Error(`extraNics.mac: expected aa:bb:cc:dd:ee:ff, received ${JSON.stringify(n.mac)}`);
}

interface Waiter {
  test: (m: Mark) => boolean;
  resolve: (m: Mark) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
  what: string;
}
interface LineWaiter {
  re: RegExp;
  resolve: (l: SerialLineRecord) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

const MAX_LINES = 50_000;

/** Starts QEMU inside the lab (lab.spawn, so lab.close() stops it too). */
export function startVm(o: StartVmOptions): Vm {
  validate(o);
  const accel = o.accel ?? defaultAccel();
  const serialLog = o.serialLog ?? path.join(o.lab.dir, o.name, 'serial.log');
  const dir = path.dirname(serialLog);
  mkdirSync(dir, { recursive: true });
  prepareDisk(o.disk, o.diskSizeBytes);
  const args = qemuArgs(o, dir, accel);
  writeFileSync(path.join(dir, 'qemu.cmd'), ['qemu-system-x86_64', ...args].map((x) => (/^[\w,.=:/@+-]+$/.test(x) ? x : `'${x}'`)).join(' ') + '\n');

  const marks: Mark[] = [];
  const lines: SerialLineRecord[] = [];
  const waiters = new Set<Waiter>();
  const lineWaiters = new Set<LineWaiter>();
  const log = createWriteStream(serialLog);
  const raw = createWriteStream(path.join(dir, 'serial.raw'));
  const errLog = createWriteStream(path.join(dir, 'qemu.stderr.log'));
  let done = false;
  let exitInfo: VmExit | null = null;
  let killed = false;
  let timedOut = false;

  const parser = new MarkParser((m) => {
    marks.push(m);
    for (const w of waiters) {
      if (w.test(m)) {
        settle(w);
        w.resolve(m);
      }
    }
  }, o.patterns ?? PSEUDO_MARKS);
  const screen = new SerialScreen((l) => {
    const rec = { t: l.t, text: l.text };
    if (lines.length < MAX_LINES) lines.push(rec);
    log.write(`+${l.t.toFixed(3)} ${l.text}\n`);
    parser.line(l);
    for (const w of lineWaiters) {
      if (w.re.test(l.text)) {
        if (w.timer) clearTimeout(w.timer);
        lineWaiters.delete(w);
        w.resolve(rec);
      }
    }
  }, o.firmware === 'bios' ? { wrapColumns: 80 } : {});

  const startedAt = Date.now();
  const t0 = performance.now();
  const child: ChildProcess = o.lab.spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`${o.name}: qemu-system-x86_64 did not start`);
  const pid = child.pid;
  child.stdout!.on('data', (d: Buffer) => {
    const t = (performance.now() - t0) / 1000;
    raw.write(d);
    const cur = screen.feed(d, t);
    if (cur) parser.partial(cur);
  });
  child.stderr!.on('data', (d: Buffer) => errLog.write(d));

  const tail = (n = 12) => lines.slice(-n).map((l) => `  +${l.t.toFixed(1)} ${l.text}`).join('\n');
  function settle(w: Waiter): void {
    if (w.timer) clearTimeout(w.timer);
    waiters.delete(w);
  }

  const kill = (): Promise<VmExit> => {
    if (!done && child.exitCode === null && child.signalCode === null) {
      killed = true;
      child.kill('SIGTERM');
      const hard = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }, 3000);
      void exited.then(() => clearTimeout(hard));
    }
    return exited;
  };

  const timeoutMs = o.timeoutMs ?? 300_000;
  const deadline = setTimeout(() => {
    timedOut = true;
    void kill();
  }, timeoutMs);

  const exited = new Promise<VmExit>((resolve) => {
    child.once('error', (err) => errLog.write(`spawn error: ${err.message}\n`));
    child.once('close', (code, signal) => {
      clearTimeout(deadline);
      screen.flush();
      done = true;
      exitInfo = { code, signal, killed, timedOut };
      const why = `${o.name}: QEMU exited (code=${code} signal=${signal}${timedOut ? ', timed out' : killed ? ', killed' : ''})`;
      for (const w of waiters) {
        settle(w);
        w.reject(new Error(`${why} before mark ${w.what}; serial log ${serialLog}:\n${tail()}`));
      }
      for (const w of lineWaiters) {
        if (w.timer) clearTimeout(w.timer);
        w.reject(new Error(`${why} before a line matching ${w.re}; serial log ${serialLog}:\n${tail()}`));
      }
      lineWaiters.clear();
      writeFileSync(path.join(dir, 'marks.json'), JSON.stringify({ name: o.name, mac: o.mac, startedAt, exit: exitInfo, marks }, null, 2) + '\n');
      let open = 3;
      const closed = () => {
        if (--open === 0) resolve(exitInfo!);
      };
      log.end(closed);
      raw.end(closed);
      errLog.end(closed);
    });
  });

  const waitFor = (what: string | RegExp, ms?: number, wo: WaitOptions = {}): Promise<Mark> => {
    const after = wo.after?.seq ?? -1;
    const test = (m: Mark) => m.seq > after && (typeof what === 'string' ? m.name === what : what.test(`${m.name} ${m.text}`));
    const label = typeof what === 'string' ? what : String(what);
    const seen = marks.find(test);
    if (seen) return Promise.resolve(seen);
    if (done) return Promise.reject(new Error(`${o.name}: QEMU has exited (${JSON.stringify(exitInfo)}) without mark ${label}; serial log ${serialLog}:\n${tail()}`));
    return new Promise<Mark>((resolve, reject) => {
      const w: Waiter = { test, resolve, reject, timer: null, what: label };
      if (ms !== undefined) {
        w.timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`${o.name}: no mark ${label} within ${ms} ms; serial log ${serialLog}:\n${tail()}`));
        }, ms);
      }
      waiters.add(w);
    });
  };

  const waitForLine = (re: RegExp, ms?: number): Promise<SerialLineRecord> => {
    const seen = lines.find((l) => re.test(l.text));
    if (seen) return Promise.resolve(seen);
    if (done) return Promise.reject(new Error(`${o.name}: QEMU has exited without a line matching ${re}; serial log ${serialLog}:\n${tail()}`));
    return new Promise<SerialLineRecord>((resolve, reject) => {
      const w: LineWaiter = { re, resolve, reject, timer: null };
      if (ms !== undefined) {
        w.timer = setTimeout(() => {
          lineWaiters.delete(w);
          reject(new Error(`${o.name}: no line matching ${re} within ${ms} ms; serial log ${serialLog}:\n${tail()}`));
        }, ms);
      }
      lineWaiters.add(w);
    });
  };

  return {
    name: o.name,
    mac: o.mac,
    pid,
    dir,
    serialLog,
    startedAt,
    args,
    marks,
    lines,
    waitFor,
    waitForLine,
    exited,
    kill,
  };
}

/** QEMU's exit status for a guest that writes `value` to isa-debug-exit (port 0xf4). */
export function debugExitStatus(value: number): number {
  return ((value << 1) | 1) & 0xff;
}
