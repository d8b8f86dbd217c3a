import { describe, expect, it } from 'vitest';
import type { Mark } from './serial.js';
import { buildTimelines, normalizeMac, phaseTime, renderComparison, renderPhaseTable } from './timeline.js';

const mark = (name: string, t: number, seq: number, pseudo = false, text = ''): Mark => ({ name, t, seq, pseudo, text });
const T0 = 1_700_000_000_000;

describe('timeline', () => {
  const vms = [
    { name: 'ep0', mac: '52:54:00:91:00:10', startedAt: T0, marks: [mark('FW-IPXE', 0.3, 0, true), mark('FW-DHCP', 2.3, 1, true), mark('AGENT-START', 13.7, 2)] },
    { name: 'ep1', mac: '52:54:00:91:00:11', startedAt: T0 + 1000, marks: [mark('FW-DHCP', 2.5, 0, true)] },
  ];
  const events = [
    { t: T0 + 2400, phase: 'dhcp-offer', mac: '52-54-00-91-00-10', detail: 'ip=10.91.0.100' },
    { t: T0 + 3700, phase: 'dhcp-offer', mac: '525400910011' },
    { t: T0 + 5000, phase: 'unrelated', mac: '52:54:00:00:00:99' },
    { t: T0 + 5000, phase: 'no-mac', mac: '' },
  ];

  it('merges server events onto each VM clock by MAC, in time order', () => {
    const [a, b] = buildTimelines(vms, events);
    expect(a!.rows.map((r) => [r.phase, r.t, r.source])).toEqual([
      ['FW-IPXE', 0.3, 'vm'],
      ['FW-DHCP', 2.3, 'vm'],
      ['dhcp-offer', 2.4, 'server'],
      ['AGENT-START', 13.7, 'vm'],
    ]);
    expect(b!.rows.map((r) => [r.phase, r.t])).toEqual([
      ['FW-DHCP', 2.5],
      ['dhcp-offer', 2.7],
    ]);
    expect(phaseTime(a!, 'dhcp-offer')).toBe(2.4);
    expect(phaseTime(a!, 'nope')).toBeNull();
  });

  it('can keep only our own marks and first occurrences', () => {
    const v = { ...vms[0]!, marks: [...vms[0]!.marks, mark('AGENT-START', 40, 3)] };
    const [a] = buildTimelines([v], [], { ownMarksOnly: true, firstOnly: true });
    expect(a!.rows.map((r) => r.phase)).toEqual(['AGENT-START']);
  });

  it('renders markdown tables', () => {
    const tls = buildTimelines(vms, events);
    expect(renderPhaseTable(tls[0]!)).toBe(
      ['| phase | t (s) |', '|---|---:|', '| FW-IPXE | 0.3 |', '| FW-DHCP | 2.3 |', '| dhcp-offer | 2.4 |', '| AGENT-START | 13.7 |', ''].join('\n'),
    );
    expect(renderPhaseTable(tls[0]!, { source: true, detail: 20 }).split('\n')[4]).toBe('| dhcp-offer | 2.4 | server | ip=10.91.0.100 |');
    expect(renderComparison(tls)).toBe(
      ['| phase | ep0 t (s) | ep1 t (s) |', '|---|---:|---:|', '| FW-IPXE | 0.3 | – |', '| FW-DHCP | 2.3 | 2.5 |', '| dhcp-offer | 2.4 | 2.7 |', '| AGENT-START | 13.7 | – |', ''].join('\n'),
    );
  });

  it('normalises MACs', () => {
    expect(normalizeMac('52-54-00-AB-00-10')).toBe('52:54:00:ab:00:10');
    expect(() => normalizeMac('52:54')).toThrow(/6 bytes/);
  });
});
