// Serial console → timed lines → marks. Pure: no I/O, fed with (text, t) by qemu.ts, unit-tested alone.
//
// SerialScreen renders the byte stream the way a terminal line would look, keeping for every character
// the time at which its byte arrived: '\b' moves the cursor back (iPXE's spinner and prompt erasing
// overwrite in place), '\r' followed by more text starts a new line (so transient text such as
// "Press Ctrl-B to configure iPXE" is kept as its own line), ANSI escapes are dropped, and a
// cursor-position/clear-screen/reset escape (OVMF, the kernel's "\ec") ends the current line.
// A line's time is the arrival time of its first visible character; a match's time is that of the
// match's first character — e.g. "Linux version" arrives seconds after "Probing EDD ... o" on the
// same line, and "Configuring (net0 …)" only ends with a newline when DHCP finishes.
//
// MarkParser turns lines into marks: `@@MARK NAME rest…` printed by our own code (MBR, /init, agent),
// and pseudo-marks for firmware/iPXE/kernel milestones. Pseudo-mark patterns list only strings seen
// in real runs here (QEMU 7.2, SeaBIOS 1.16.2, Debian iPXE 1.0.0+git-20190125, OVMF 2022.11,
// Debian kernel 6.1): see PSEUDO_MARKS.

export interface ScreenLine {
  /** Increases by one for every line the screen starts. */
  id: number;
  text: string;
  /** Arrival time (s) of each character of `text`. */
  times: number[];
  /** Arrival time (s) of the first non-blank character. */
  t: number;
}

type EscState = 'text' | 'esc' | 'csi';

export class SerialScreen {
  private cells: { ch: string; t: number }[] = [];
  private cursor = 0;
  private pendingCr = false;
  private esc: EscState = 'text';
  private id = 0;
  private readonly decoder = new TextDecoder('utf-8');

  /**
   * `onLine` receives every completed non-blank line. `wrapColumns`: SeaBIOS's sercon (BIOS) emulates
   * an 80-column screen and sends "\r\n" when the cursor passes column 80, splitting iPXE's long lines
   * ("… No configuration methods" / "succeeded (…)"); with wrapColumns 80, a newline arriving exactly at
   * column 80 continues the line instead. (A line of exactly 80 columns is then joined with the next.)
   */
  constructor(
    private readonly onLine: (line: ScreenLine) => void,
    private readonly opts: { wrapColumns?: number } = {},
  ) {}

  /** Feeds bytes (or text) that arrived at time t (s); returns the current incomplete line, if any. */
  feed(data: Uint8Array | string, t: number): ScreenLine | null {
    const text = typeof data === 'string' ? data : this.decoder.decode(data, { stream: true });
    for (const ch of text) this.put(ch, t);
    return this.current();
  }

  /** Emits the incomplete line, if any (at the end of the stream). */
  flush(): void {
    this.breakLine();
  }

  /** The line being written (not yet ended), or null when it is blank. */
  current(): ScreenLine | null {
    return this.snapshot();
  }

  private put(ch: string, t: number): void {
    if (this.esc === 'esc') {
      this.esc = ch === '[' ? 'csi' : 'text';
      if (ch === 'c') this.breakLine(); // ESC c: terminal reset
      return;
    }
    if (this.esc === 'csi') {
      const code = ch.charCodeAt(0);
      if (code >= 0x40 && code <= 0x7e) {
        this.esc = 'text';
        if (ch === 'H' || ch === 'f' || ch === 'J') this.breakLine(); // cursor moved / screen cleared
      }
      return;
    }
    switch (ch) {
      case '\x1b':
        this.esc = 'esc';
        return;
      case '\n':
        if (this.opts.wrapColumns && this.cursor === this.opts.wrapColumns && this.cells.length === this.cursor) {
          this.pendingCr = false; // soft wrap: the line goes on
          return;
        }
        this.breakLine();
        return;
      case '\r':
        this.pendingCr = true;
        return;
      case '\b':
        this.cursor = Math.max(0, this.cursor - 1);
        return;
    }
    const code = ch.charCodeAt(0);
    if ((code < 0x20 && ch !== '\t') || code === 0x7f) return;
    if (this.pendingCr) {
      this.pendingCr = false;
      this.breakLine();
    }
    this.cells[this.cursor] = { ch, t };
    this.cursor++;
  }

  private snapshot(): ScreenLine | null {
    let end = this.cells.length;
    while (end > 0 && /\s/.test(this.cells[end - 1]!.ch)) end--;
    const first = this.cells.findIndex((c) => c !== undefined && !/\s/.test(c.ch));
    if (first < 0 || end === 0) return null;
    const cells = this.cells.slice(0, end).map((c) => c ?? { ch: ' ', t: this.cells[first]!.t });
    return { id: this.id, text: cells.map((c) => c.ch).join(''), times: cells.map((c) => c.t), t: cells[first]!.t };
  }

  private breakLine(): void {
    const line = this.snapshot();
    this.cells = [];
    this.cursor = 0;
    this.pendingCr = false;
    this.id++;
    if (line) this.onLine(line);
  }
}

export interface Mark {
  name: string;
  /** Seconds since VM start: arrival of the mark's first character. */
  t: number;
  /** The rest of an @@MARK line, or the whole line for a pseudo-mark. */
  text: string;
  /** true for firmware/iPXE/kernel milestones recognised by PSEUDO_MARKS. */
  pseudo: boolean;
  /** Position in the VM's mark list (0, 1, …). */
  seq: number;
}

export interface PseudoMarkPattern {
  name: string;
  re: RegExp;
  /** Also match on a line still being written (fixed text whose line ends much later). */
  partial?: boolean;
}

/**
 * Firmware/iPXE/kernel milestones, each seen in real runs here (see test/e2e/README.md for timings).
 * A pattern fires at most once per line and again on every later line that matches (a reboot repeats them).
 */
export const PSEUDO_MARKS: readonly PseudoMarkPattern[] = [
  // SeaBIOS banner: "SeaBIOS (version 1.16.2-debian-1.16.2-1)" (BIOS, via sercon)
  { name: 'FW-SEABIOS', re: /SeaBIOS \(version [^)]*\)/, partial: true },
  // iPXE banner, BIOS ROM and EFI ROM alike: "iPXE 1.0.0+git-20190125.36a4c85-5.1 -- Open Source Network Boot Firmware --"
  { name: 'FW-IPXE', re: /iPXE \S+ -- Open Source Network Boot Firmware/, partial: true },
  // iPXE starts DHCP (and IPv6 autoconf): "Configuring (net0 52:54:00:91:00:10)......" — the line ends only when done
  { name: 'FW-DHCP', re: /Configuring \(net\d+ [0-9a-f:]{17}\)/, partial: true },
  // iPXE got an IPv4 address: "net0: 10.91.0.144/255.255.255.0"
  { name: 'FW-IP', re: /^net\d+: \d+\.\d+\.\d+\.\d+\/\d+\.\d+\.\d+\.\d+/ },
  // iPXE's DHCP failed: "... No configuration methods succeeded (http://ipxe.org/040ee119)"
  { name: 'FW-DHCP-FAILED', re: /No configuration methods succeeded/ },
  // iPXE downloads: "http://10.91.0.1:8080/boot.ipxe... ok"
  { name: 'FW-FETCH', re: /(?:https?|tftp):\/\/\S+\.\.\. \S/ },
  // iPXE recognised a script: "boot.ipxe : 173 bytes [script]"
  { name: 'FW-SCRIPT', re: /\S+ : \d+ bytes \[script\]/ },
  // BIOS iPXE ROM gave up, SeaBIOS goes on: "No more network devices"
  { name: 'FW-NO-NET', re: /No more network devices/ },
  // SeaBIOS boots the disk: "Booting from Hard Disk.."
  { name: 'FW-BOOT-DISK', re: /Booting from Hard Disk/ },
  // OVMF boot manager: 'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from …', 'BdsDxe: loading Boot0002 …', 'BdsDxe: starting …'
  { name: 'FW-BDS', re: /BdsDxe: (?:loading|starting|failed to load) Boot[0-9A-F]{4}/ },
  // OVMF's own network boot: ">>Start PXE over IPv4.", ">>Start PXE over IPv6..", ">>Start HTTP Boot over IPv4." (the dots come later)
  { name: 'FW-UEFI-NETBOOT', re: />>Start (?:PXE|HTTP Boot) over IPv[46]/, partial: true },
  // OVMF fell through to the shell: "UEFI Interactive Shell v2.2"
  { name: 'FW-UEFI-SHELL', re: /UEFI Interactive Shell/ },
  // Kernel (not printed with `quiet`): "[    0.000000] Linux version 6.1.0-56-amd64 (…"
  { name: 'KERNEL', re: /Linux version \S+/ },
  // Kernel runs the initramfs: "[    2.324991] Run /init as init process"
  { name: 'KERNEL-INIT', re: /Run \S+ as init process/ },
  // Kernel powers off: "[    2.451385] reboot: Power down"
  { name: 'KERNEL-POWEROFF', re: /reboot: Power down/ },
];

const MARK_RE = /@@MARK ([A-Za-z0-9][A-Za-z0-9_.:-]*)(?:[ \t]+(.*))?$/;

export class MarkParser {
  private partialFired: { id: number; names: Set<string> } = { id: -1, names: new Set() };
  private seq = 0;

  constructor(
    private readonly onMark: (mark: Mark) => void,
    private readonly patterns: readonly PseudoMarkPattern[] = PSEUDO_MARKS,
  ) {}

  /** A completed line. */
  line(line: ScreenLine): void {
    const m = MARK_RE.exec(line.text);
    if (m) {
      this.emit(m[1]!, line.times[m.index] ?? line.t, (m[2] ?? '').trim(), false);
      return; // our own marks are not also firmware milestones
    }
    const fired = this.partialFired.id === line.id ? this.partialFired.names : new Set<string>();
    this.match(line, (p) => !fired.has(p.name));
  }

  /** The line still being written (only `partial` patterns apply). */
  partial(line: ScreenLine): void {
    if (this.partialFired.id !== line.id) this.partialFired = { id: line.id, names: new Set() };
    const fired = this.partialFired.names;
    this.match(line, (p) => p.partial === true && !fired.has(p.name), fired);
  }

  private match(line: ScreenLine, applies: (p: PseudoMarkPattern) => boolean, record?: Set<string>): void {
    for (const p of this.patterns) {
      if (!applies(p)) continue;
      const m = p.re.exec(line.text);
      if (!m) continue;
      record?.add(p.name);
      this.emit(p.name, line.times[m.index] ?? line.t, line.text.trim(), true);
    }
  }

  private emit(name: string, t: number, text: string, pseudo: boolean): void {
    this.onMark({ name, t, text, pseudo, seq: this.seq++ });
  }
}
