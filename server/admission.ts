import { randomBytes } from 'node:crypto';

/** The verdict on one heavy request: go (and call `release` when it is over), or wait in line (and come back after `retryAfter` seconds). */
export type Admitted = { admitted: true; ticket: string; release: () => void } | { admitted: false; ticket: string; position: number; retryAfter: number };

interface Pass {
  inFlight: number;
  /** When its last request ended (while none runs). */
  idleSince: number;
}

/** The longest a client is told to wait before asking again (s). */
export const RETRY_AFTER_MAX = 60;
/** Slots freed within this long tell how fast the line moves. */
const RATE_WINDOW_MS = 60_000;

/**
 * Admission for heavy transfers (batch fetches, deltas, chunk uploads), by client: at most `max`
 * clients transfer at once. A client admitted gets a ticket (response header `x-deskfuse-ticket`)
 * that is its pass: its next heavy requests, sent with it, go through while it keeps transferring,
 * and its slot frees `graceMs` after its last request ended (an agent's batch fetches follow each
 * other closely). Past `max`, a request is refused at once (503 DF_ERR_BUSY) with a ticket, its place
 * in line and when to come back: `retryAfterSeconds` near the head of the line, longer further back
 * (its place over the rate slots have been freeing, at most RETRY_AFTER_MAX), so 500 waiting endpoints
 * do not each ask every few seconds. When it comes back with its ticket, the first in line get the
 * slots that freed, so a storm is served in arrival order, each endpoint start to end. A waiting ticket
 * not seen again within 1.5 × its Retry-After + 2 s leaves the line (the client gave up). `max` 0
 * admits everything.
 */
export class Admission {
  private readonly passes = new Map<string, Pass>();
  /** Waiting tickets, in arrival order (a Map keeps insertion order), with when each is forgotten. */
  private readonly line = new Map<string, number>();
  /** When the last slots freed (at most FREED_KEPT): the rate the line moves at. */
  private readonly freed: number[] = [];
  private static readonly FREED_KEPT = 64;

  constructor(readonly max: number, readonly retryAfterSeconds = 5, private readonly graceMs = 1000, private readonly now: () => number = Date.now) {}

  /** Clients transferring now (their slots), and tickets waiting (metrics). */
  get running(): number {
    this.expire();
    return this.passes.size;
  }
  get waiting(): number {
    this.expire();
    return this.line.size;
  }

  enter(ticket?: string): Admitted {
    this.expire();
    const pass = ticket === undefined ? undefined : this.passes.get(ticket);
    if (pass) return this.admit(ticket!, pass);
    const known = ticket !== undefined && this.line.has(ticket);
    const place = known ? [...this.line.keys()].indexOf(ticket) : this.line.size;
    const free = this.max === 0 ? Infinity : this.max - this.passes.size;
    // Slots go to the head of the line first: a newcomer gets one only past everyone waiting.
    if (place < free) {
      const t = known ? ticket : newTicket();
      this.line.delete(t);
      const p: Pass = { inFlight: 0, idleSince: this.now() };
      this.passes.set(t, p);
      return this.admit(t, p);
    }
    const t = known ? ticket : newTicket();
    const retryAfter = this.retryAfterFor(place + 1);
    this.line.set(t, this.now() + (1.5 * retryAfter + 2) * 1000);
    return { admitted: false, ticket: t, position: place + 1, retryAfter };
  }

  /**
   * Seconds until a client at `position` is worth asking again: a third of the base for the next
   * `max` in line (the next slots to free are theirs), the base for the next `max`; further back, half
   * of the time the slots freed lately take to reach it (an early client just waits again, keeping its place).
   */
  private retryAfterFor(position: number): number {
    const base = this.retryAfterSeconds;
    // the next to get a slot come back sooner: a slot freed while the head of the line sleeps stays idle
    if (position <= this.max) return Math.max(1, Math.round(base / 3));
    if (position <= 2 * this.max) return base;
    // the rate over the last minute only: slots freed before a lull say nothing about now
    const now = this.now();
    const recent = this.freed.filter((t) => now - t <= RATE_WINDOW_MS);
    if (recent.length < 4) return base;
    const perSecond = recent.length / Math.max(1, (now - recent[0]!) / 1000);
    const ahead = position - this.max; // the first `max` in line get the next slots to free
    return Math.max(base, Math.min(RETRY_AFTER_MAX, Math.round((0.5 * ahead) / perSecond)));
  }

  private admit(ticket: string, pass: Pass): Admitted {
    pass.inFlight++;
    let done = false;
    return {
      admitted: true,
      ticket,
      release: () => {
        if (done) return;
        done = true;
        if (--pass.inFlight === 0) pass.idleSince = this.now();
      },
    };
  }

  private expire(): void {
    const now = this.now();
    for (const [t, p] of this.passes) {
      if (p.inFlight === 0 && now - p.idleSince > this.graceMs) {
        this.passes.delete(t);
        this.freed.push(now);
        if (this.freed.length > Admission.FREED_KEPT) this.freed.shift();
      }
    }
    for (const [t, forgetAt] of this.line) if (now > forgetAt) this.line.delete(t);
  }
}

const newTicket = (): string => randomBytes(9).toString('base64url');
