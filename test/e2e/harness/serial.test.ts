import { describe, expect, it } from 'vitest';
import { MarkParser, SerialScreen, type Mark, type ScreenLine } from './serial.js';

function rig() {
  const lines: ScreenLine[] = [];
  const marks: Mark[] = [];
  const parser = new MarkParser((m) => marks.push(m));
  const screen = new SerialScreen((l) => {
    lines.push(l);
    parser.line(l);
  });
  const feed = (s: string | Uint8Array, t: number) => {
    const cur = screen.feed(s, t);
    if (cur) parser.partial(cur);
  };
  return { lines, marks, feed, screen };
}

describe('SerialScreen', () => {
  it('stamps a line by its first visible byte and ends it at \\n', () => {
    const r = rig();
    r.feed('\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r', 0.11);
    r.feed('\n', 0.2);
    expect(r.lines).toEqual([expect.objectContaining({ text: 'SeaBIOS (version 1.16.2-debian-1.16.2-1)', t: 0.11 })]);
  });

  it("keeps text that a '\\r' overwrites as its own line and drops blank lines", () => {
    const r = rig();
    r.feed(`Press Ctrl-B to configure iPXE (PCI 00:01.0)...\r${' '.repeat(79)}\r\n`, 0.12);
    expect(r.lines.map((l) => l.text)).toEqual(['Press Ctrl-B to configure iPXE (PCI 00:01.0)...']);
  });

  it("renders '\\b' as cursor-back (iPXE's spinner and erased prompt)", () => {
    const r = rig();
    r.feed('Press Ctrl-B for the iPXE command line...', 0.3);
    r.feed('\b \b'.repeat(42), 2.3);
    r.feed('net0: 52:54:00:91:00:10 using virtio-net on 0000:00:01.0 (open)\r\n', 2.31);
    r.feed('Configuring (net0 52:54:00:91:00:10)...-\b\\\b|\b/\b.', 2.4);
    r.feed(' ok\r\n', 18.4);
    expect(r.lines.map((l) => l.text)).toEqual([
      'net0: 52:54:00:91:00:10 using virtio-net on 0000:00:01.0 (open)',
      'Configuring (net0 52:54:00:91:00:10).... ok',
    ]);
    expect(r.lines[1]!.t).toBe(2.4);
  });

  it('ends the line at a terminal reset or cursor positioning (kernel, OVMF)', () => {
    const r = rig();
    r.feed('Probing EDD (edd=off to disable)... o', 19.2);
    r.feed('\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r\n', 23.3);
    r.feed('\x1b[07;01HPress ESC in 5 seconds\x1b[07;01HPress ESC in 4 seconds', 5);
    r.screen.flush();
    expect(r.lines.map((l) => [l.text, l.t])).toEqual([
      ['Probing EDD (edd=off to disable)... o', 19.2],
      ['[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)', 23.3],
      ['Press ESC in 5 seconds', 5],
      ['Press ESC in 4 seconds', 5],
    ]);
  });

  it('decodes UTF-8 split across chunks', () => {
    const r = rig();
    const b = Buffer.from('déjà vu\n');
    r.feed(b.subarray(0, 2), 1);
    r.feed(b.subarray(2), 2);
    expect(r.lines[0]!.text).toBe('déjà vu');
  });
});

describe('MarkParser', () => {
  it('parses @@MARK lines, timed by the arrival of "@@MARK"', () => {
    const r = rig();
    r.feed('Booting from Hard Disk..\r', 20.4);
    r.feed('\n@@MARK MBR-BOOTED boot sector ran\r\n', 20.7);
    r.feed('@@MARK AGENT-START\n', 21);
    expect(r.marks.map(({ name, t, text, pseudo }) => ({ name, t, text, pseudo }))).toEqual([
      { name: 'FW-BOOT-DISK', t: 20.4, text: 'Booting from Hard Disk..', pseudo: true },
      { name: 'MBR-BOOTED', t: 20.7, text: 'boot sector ran', pseudo: false },
      { name: 'AGENT-START', t: 21, text: '', pseudo: false },
    ]);
    expect(r.marks.map((m) => m.seq)).toEqual([0, 1, 2]);
  });

  it('fires a partial pattern once, while its line is still being written', () => {
    const r = rig();
    r.feed('Configuring (net0 52:54:00:91:00:10)....', 2.3);
    expect(r.marks.map((m) => [m.name, m.t])).toEqual([['FW-DHCP', 2.3]]);
    r.feed('.....', 10);
    r.feed(' No configuration methods succeeded (http://ipxe.org/040ee119)\r\n', 18.7);
    expect(r.marks.map((m) => [m.name, m.t])).toEqual([
      ['FW-DHCP', 2.3],
      ['FW-DHCP-FAILED', 18.7],
    ]);
  });

  it('times a match by its first character, not by the line start', () => {
    const r = rig();
    r.feed('[    2.324991] ', 25.8);
    r.feed('Run /init as init process\r\n', 25.9);
    expect(r.marks).toEqual([expect.objectContaining({ name: 'KERNEL-INIT', t: 25.9 })]);
  });

  it('recognises the observed iPXE fetch and script lines', () => {
    const r = rig();
    r.feed('\x1b[0;1miPXE 1.0.0+git-20190125.36a4c85-5.1\x1b[0m -- Open Source Network Boot Firmware -- \x1b[0;36mhttp\r\n', 0.25);
    r.feed('net0: 10.91.0.144/255.255.255.0\r\nhttp://10.91.0.1:8080/boot.ipxe... ok\r\nboot.ipxe : 173 bytes [script]\r\n', 18.4);
    r.feed('>>Start PXE over IPv4.', 27.6);
    expect(r.marks.map((m) => m.name)).toEqual(['FW-IPXE', 'FW-IP', 'FW-FETCH', 'FW-SCRIPT', 'FW-UEFI-NETBOOT']);
  });
});

describe('SerialScreen with wrapColumns (SeaBIOS sercon)', () => {
  it('joins a line that sercon broke at column 80', () => {
    const lines: string[] = [];
    const marks: string[] = [];
    const parser = new MarkParser((m) => marks.push(m.name));
    const screen = new SerialScreen((l) => (lines.push(l.text), parser.line(l)), { wrapColumns: 80 });
    const first = 'Configuring (net0 52:54:00:91:00:10).................. No configuration methods ';
    expect(first.length).toBe(80);
    screen.feed(`${first}\r\n`, 2.3);
    screen.feed('succeeded (http://ipxe.org/040ee119)\r\nNo more network devices\r\n', 18.4);
    expect(lines).toEqual([`${first}succeeded (http://ipxe.org/040ee119)`, 'No more network devices']);
    expect(marks).toEqual(['FW-DHCP', 'FW-DHCP-FAILED', 'FW-NO-NET']);
  });
});
