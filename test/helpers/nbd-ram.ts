import { setImmediate as tick } from 'node:timers/promises';
import { dfError } from '../../src/errors.js';
import { STATE } from '../../src/nbd/constants.js';
import type { NbdExport, NbdExportEntry, NbdExportProvider, NbdOpenContext } from '../../src/nbd/export.js';
import type { Extent } from '../../src/nbd/transmission.js';

/**
 * An NbdExportProvider over RAM, for tests: exports keep their bytes across connections, extents
 * report all-zero 4 KiB blocks as HOLE|ZERO, and every open, close and export call is recorded so tests
 * can assert what the server did (ordering, concurrency, clean/dirty closes).
 */

export interface RamExportSpec {
  name: string;
  size: number;
  readOnly?: boolean;
  description?: string;
  /** NBD_INFO_BLOCK_SIZE minimum (default 1). */
  minimumBlock?: number;
  /** Initial contents (default zeros). */
  fill?: (b: Buffer) => void;
  /** NBD_FLAG_CAN_MULTI_CONN: connections share the bytes, a flush on any snapshots them to `durable`. */
  multiConn?: boolean;
}

export type RamOp = 'read' | 'write' | 'zero' | 'flush' | 'extents';

export interface OpenRecord { name: string; purpose: NbdOpenContext['purpose']; remote: string }
export interface CloseRecord { name: string; purpose: NbdOpenContext['purpose']; clean: boolean; wrote: boolean }

export const GRANULE = 4096;
export const MiB = 1 << 20;

/** "ram": 4 MiB writable, zeros; "ro": 1 MiB read-only, byte i = i mod 251; "blk": 1 MiB, 512-byte minimum block. */
export const DEFAULT_EXPORTS: RamExportSpec[] = [
  { name: 'ram', size: 4 * MiB, description: 'scratch RAM disk' },
  { name: 'ro', size: MiB, readOnly: true, description: 'read-only pattern', fill: (b) => { for (let i = 0; i < b.length; i++) b[i] = i % 251; } },
  { name: 'blk', size: MiB, minimumBlock: 512, description: '512-byte sectors' },
];

export class RamProvider implements NbdExportProvider {
  /** Each export's bytes as of its last flush (any connection). */
  readonly durable = new Map<string, Buffer>();
  readonly data = new Map<string, Buffer>();
  readonly opens: OpenRecord[] = [];
  readonly closes: CloseRecord[] = [];
  /** Export calls in the order they started and ended: 'write:start 0+4096', 'write:end 0+4096', 'flush:start'. */
  readonly events: string[] = [];
  readonly calls: Record<RamOp, number> = { read: 0, write: 0, zero: 0, flush: 0, extents: 0 };
  /** Breaches of the export contract by the server: a second close(), a call running at or after close(). */
  readonly violations: string[] = [];
  /** Export calls running at once, now and at most. */
  active = 0;
  peak = 0;
  /** Names open() refuses with DF_ERR_FORBIDDEN (→ NBD_REP_ERR_POLICY). */
  forbidden = new Set(['secret']);
  /** Runs at the start of open(): return a promise to hold it. */
  openHook: ((name: string) => Promise<void> | void) | undefined;
  /** open(name) throws this error instead (to test how the server maps provider errors). */
  openError = new Map<string, Error>();
  /** list() throws DF_ERR_FORBIDDEN. */
  refuseList = false;
  /** Runs at the start of every export call: return a promise to hold it, throw to fail it. */
  hook: ((op: RamOp, offset: number, length: number) => Promise<void> | void) | undefined;
  private readonly specs = new Map<string, RamExportSpec>();
  private closeWaiters: (() => void)[] = [];

  constructor(specs: RamExportSpec[] = DEFAULT_EXPORTS) {
    for (const s of specs) {
      this.specs.set(s.name, s);
      const b = Buffer.alloc(s.size);
      s.fill?.(b);
      this.data.set(s.name, b);
    }
  }

  async list(): Promise<NbdExportEntry[]> {
    if (this.refuseList) throw dfError('DF_ERR_FORBIDDEN', 'listing is disabled');
    return [...this.specs.values()].map((s) => ({ name: s.name, description: s.description ?? '' }));
  }

  async open(name: string, ctx: NbdOpenContext): Promise<NbdExport> {
    await this.openHook?.(name);
    const fault = this.openError.get(name);
    if (fault) throw fault;
    if (this.forbidden.has(name)) throw dfError('DF_ERR_FORBIDDEN', `export ${name} needs a secret`);
    const spec = this.specs.get(name);
    if (!spec) throw dfError('DF_ERR_NBD_EXPORT_UNKNOWN', `no export named ${name}`, { export: name });
    this.opens.push({ name, purpose: ctx.purpose, remote: ctx.remote });
    const buf = this.data.get(name)!;
    const min = spec.minimumBlock ?? 1;
    let closed = false;
    const op = async <T>(kind: RamOp, offset: number, length: number, fn: () => T): Promise<T> => {
      if (closed) this.violations.push(`${kind} on ${name} after close`);
      this.calls[kind]++;
      this.active++;
      this.peak = Math.max(this.peak, this.active);
      const tag = kind === 'flush' ? kind : `${kind} ${offset}+${length}`;
      this.events.push(`${tag}:start`);
      try {
        await this.hook?.(kind, offset, length);
        await tick(); // a real export is asynchronous: let concurrent calls overlap
        return fn();
      } finally {
        this.active--;
        this.events.push(`${tag}:end`);
        if (closed) this.violations.push(`${kind} on ${name} still running at close`);
      }
    };
    return {
      name, description: spec.description ?? '', size: spec.size, readOnly: spec.readOnly ?? false,
      ...(spec.multiConn ? { multiConn: true } : {}),
      blockSize: { minimum: min, preferred: Math.max(min, GRANULE), maximum: 32 * MiB },
      read: (offset, length) => op('read', offset, length, () => {
        // Copies, in 256 KiB pieces: later writes must not change a reply in flight.
        const pieces: Buffer[] = [];
        for (let at = offset; at < offset + length;) {
          const end = Math.min(offset + length, (Math.floor(at / (256 * 1024)) + 1) * 256 * 1024);
          pieces.push(Buffer.from(buf.subarray(at, end)));
          at = end;
        }
        return pieces.length === 1 ? pieces[0]! : pieces;
      }),
      write: (offset, data) => op('write', offset, data.length, () => { data.copy(buf, offset); }),
      zero: (offset, length) => op('zero', offset, length, () => { buf.fill(0, offset, offset + length); }),
      // What a crash would keep: the bytes as of the last flush on any connection.
      flush: () => op('flush', 0, 0, () => { this.durable.set(name, Buffer.from(buf)); }),
      extents: (offset, length) => op('extents', offset, length, () => extentsOf(buf, offset, length)),
      close: async (how) => {
        if (closed) {
          this.violations.push(`${name} closed twice`);
          throw new Error(`export ${name} closed twice`);
        }
        closed = true;
        this.closes.push({ name, purpose: ctx.purpose, ...how });
        for (const w of this.closeWaiters.splice(0)) w();
      },
    };
  }

  /** Resolves once `n` closes have been recorded (fails after `ms`). */
  async waitCloses(n: number, ms = 5000): Promise<CloseRecord[]> {
    const until = Date.now() + ms;
    while (this.closes.length < n) {
      if (Date.now() > until) throw new Error(`expected ${n} export closes, saw ${JSON.stringify(this.closes)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.closeWaiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
    return this.closes;
  }
}

/** base:allocation at GRANULE granularity: all-zero granules are HOLE|ZERO, runs merged, clipped to the range. */
export function extentsOf(buf: Buffer, offset: number, length: number): Extent[] {
  const out: Extent[] = [];
  const end = Math.min(buf.length, offset + length);
  for (let at = offset; at < end;) {
    const next = Math.min(end, (Math.floor(at / GRANULE) + 1) * GRANULE);
    const g = Math.floor(at / GRANULE) * GRANULE;
    const zero = isZero(buf.subarray(g, Math.min(buf.length, g + GRANULE)));
    const flags = zero ? STATE.HOLE | STATE.ZERO : 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += next - at;
    else out.push({ length: next - at, flags });
    at = next;
  }
  return out;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
