// Per-endpoint boot timelines: the VM's serial marks (seconds since its QEMU start) merged with the
// server's boot events (epoch ms, keyed by MAC), all on the VM's clock, plus markdown renderers.
// Pure: no I/O.
import type { Mark } from './serial.js';

/** A boot event as the server reports it. */
export interface ServerEvent {
  /** Epoch milliseconds. */
  t: number;
  phase: string;
  mac: string;
  detail?: string;
}

/** What the timeline needs of a VM (a Vm from qemu.ts fits). */
export interface TimelineVm {
  name: string;
  mac: string;
  /** Epoch ms of the QEMU start (t = 0 of its marks). */
  startedAt: number;
  marks: readonly Mark[];
}

export interface PhaseRow {
  phase: string;
  /** Seconds since the VM's QEMU start (negative: the server saw it before QEMU started). */
  t: number;
  source: 'vm' | 'server';
  detail: string;
}

export interface Timeline {
  vm: string;
  mac: string;
  rows: PhaseRow[];
}

export interface TimelineOptions {
  /** Leave out pseudo-marks (firmware/iPXE/kernel milestones). Default false. */
  ownMarksOnly?: boolean;
  /** Keep only the first row of each phase name. Default false (a reboot repeats phases). */
  firstOnly?: boolean;
}

/** Lower-case, colon-separated MAC (accepts '-' and '.' separators and bare hex). */
export function normalizeMac(mac: string): string {
  const hex = mac.toLowerCase().replace(/[^0-9a-f]/g, '');
  if (hex.length !== 12) throw new Error(`mac: expected 6 bytes, received ${JSON.stringify(mac)}`);
  return hex.match(/../g)!.join(':');
}

/** One timeline per VM: its marks and the server events for its MAC, sorted by time (stable). */
export function buildTimelines(vms: readonly TimelineVm[], events: readonly ServerEvent[] = [], opts: TimelineOptions = {}): Timeline[] {
  return vms.map((vm) => {
    const mac = normalizeMac(vm.mac);
    const rows: PhaseRow[] = [];
    for (const m of vm.marks) {
      if (opts.ownMarksOnly && m.pseudo) continue;
      rows.push({ phase: m.name, t: m.t, source: 'vm', detail: m.text });
    }
    for (const e of events) {
      let em: string;
      try {
        em = normalizeMac(e.mac);
      } catch {
        continue; // events without a usable MAC belong to no endpoint
      }
      if (em !== mac) continue;
      rows.push({ phase: e.phase, t: (e.t - vm.startedAt) / 1000, source: 'server', detail: e.detail ?? '' });
    }
    const sorted = rows.map((r, i) => ({ r, i })).sort((a, b) => a.r.t - b.r.t || a.i - b.i).map((x) => x.r);
    const seen = new Set<string>();
    const kept = opts.firstOnly ? sorted.filter((r) => !seen.has(r.phase) && seen.add(r.phase)) : sorted;
    return { vm: vm.name, mac, rows: kept };
  });
}

/** The time of the first row with this phase, or null. */
export function phaseTime(tl: Timeline, phase: string): number | null {
  return tl.rows.find((r) => r.phase === phase)?.t ?? null;
}

const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\s+/g, ' ').trim();
const secs = (t: number) => t.toFixed(1);

export interface RenderOptions {
  /** Add a source column (vm | server). */
  source?: boolean;
  /** Add a detail column, cut to this many characters (0: no column). Default 0. */
  detail?: number;
}

/** `| phase | t (s) |` table of one timeline (optionally with source and detail columns). */
export function renderPhaseTable(tl: Timeline, opts: RenderOptions = {}): string {
  const head = ['phase', 't (s)', ...(opts.source ? ['source'] : []), ...(opts.detail ? ['detail'] : [])];
  const out = [`| ${head.join(' | ')} |`, `|${head.map((h) => (h === 't (s)' ? '---:|' : '---|')).join('')}`];
  for (const r of tl.rows) {
    const cols = [cell(r.phase), secs(r.t), ...(opts.source ? [r.source] : []), ...(opts.detail ? [cell(r.detail).slice(0, opts.detail)] : [])];
    out.push(`| ${cols.join(' | ')} |`);
  }
  return out.join('\n') + '\n';
}

/**
 * One table for several endpoints: a row per phase (first occurrence, in order of first appearance
 * across VMs' times), a column per VM, '–' where a VM never reached the phase.
 */
export function renderComparison(tls: readonly Timeline[]): string {
  const first = new Map<string, number>();
  for (const tl of tls) for (const r of tl.rows) first.set(r.phase, Math.min(first.get(r.phase) ?? Infinity, r.t));
  const phases = [...first.entries()].sort((a, b) => a[1] - b[1]).map(([p]) => p);
  const out = [`| phase | ${tls.map((t) => `${cell(t.vm)} t (s)`).join(' | ')} |`, `|---|${tls.map(() => '---:|').join('')}`];
  for (const p of phases) out.push(`| ${cell(p)} | ${tls.map((tl) => { const t = phaseTime(tl, p); return t === null ? '–' : secs(t); }).join(' | ')} |`);
  return out.join('\n') + '\n';
}
