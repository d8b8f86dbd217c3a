/**
 * How many read transfers run at once (pure: no sockets, the clock comes in as `now`).
 *
 *   RRQ ─▶ a slot free?  ─yes─▶ start
 *            │ no
 *            ▼
 *          already waiting (same client address:port)? ─yes─▶ drop it (a retransmission), note the client is alive
 *            │ no
 *            ▼
 *          room in line? ─yes─▶ queue (FIFO), started when a slot frees
 *            │ no
 *            ▼
 *          refuse (the server answers ERROR 0 "server busy")
 *
 * A refusal is the last resort: PXE firmware gives up on an ERROR, while a request left waiting is
 * just retransmitted. A waiting client not heard from for `staleMs` (it gave up: clients retransmit
 * an unanswered RRQ every 1-8 s) is dropped when its turn comes, so no slot goes to a dead client
 * (whose transfer would hold it through every retransmission timeout).
 */
export interface SlotLimits {
  /** Transfers running at once, at least 1. */
  maxActive: number;
  /** Requests waiting in line; 0: refuse as soon as every slot is taken. */
  maxQueued: number;
  /** A waiting request not heard from for this long is dropped at its turn. */
  staleMs: number;
}

/** Defaults of config tftp.maxTransfers / tftp.maxQueued (why: src/config/server.ts, TftpConfig). */
export const TFTP_DEFAULTS = { maxTransfers: 32, maxQueued: 1000 } as const;

export type Admit = 'start' | 'queued' | 'duplicate' | 'refused';

export class TransferSlots {
  private running = 0;
  /** Waiting clients, by address:port, in arrival order (Map keeps insertion order), with when last heard. */
  private readonly line = new Map<string, number>();
  peakActive = 0;
  refused = 0;

  constructor(private readonly limits: SlotLimits) {}

  get active(): number {
    return this.running;
  }
  get queued(): number {
    return this.line.size;
  }

  /** An RRQ from `client` (address:port). On 'start' the caller starts it now and calls release() when it ends. */
  request(client: string, now: number): Admit {
    const heard = this.line.get(client);
    if (heard !== undefined) {
      this.line.set(client, now); // same place in line (Map.set keeps it), heard again
      return 'duplicate';
    }
    if (this.running < this.limits.maxActive) {
      this.take();
      return 'start';
    }
    if (this.line.size < this.limits.maxQueued) {
      this.line.set(client, now);
      return 'queued';
    }
    this.refused++;
    return 'refused';
  }

  /**
   * A transfer ended: its slot goes to the first live waiting client, which the caller starts now
   * (it then holds the slot). `dropped`: waiting clients gone stale, skipped.
   */
  release(now: number): { start?: string; dropped: string[] } {
    this.running = Math.max(0, this.running - 1);
    const dropped: string[] = [];
    for (const [client, heard] of this.line) {
      this.line.delete(client);
      if (now - heard > this.limits.staleMs) {
        dropped.push(client);
        continue;
      }
      this.take();
      return { start: client, dropped };
    }
    return { dropped };
  }

  /** Forget every waiting client (the server closes); returns them. */
  drain(): string[] {
    const all = [...this.line.keys()];
    this.line.clear();
    return all;
  }

  private take(): void {
    this.running++;
    this.peakActive = Math.max(this.peakActive, this.running);
  }
}
