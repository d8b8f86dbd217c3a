import { randomBytes } from 'node:crypto';

/** The verdict on one heavy request: go (and call `release` when it is over), or wait in line. */
export type Admitted = { admitted: true; ticket: string; release: () => void } | { admitted: false; ticket: string; position: number };

interface Pass {
  inFlight: number;
  /** When its last request ended (while none runs). */
  idleSince: number;
}

/**
 * Admission for heavy transfers (batch fetches, deltas, chunk uploads), by client: at most `max`
 * clients transfer at once. A client admitted gets a ticket (response header `x-deskfuse-ticket`)
 * that is its pass: its next heavy requests, sent with it, go through while it keeps transferring,
 * and its slot frees `graceMs` after its last request ended (an agent's batch fetches follow each
 * other closely; a one-off request holds a slot that long). Past `max`, a request is refused at once
 * (503 DF_ERR_BUSY, Retry-After) with a ticket and its place in line; when it comes back with its
 * ticket, the first in line get the slots that freed, so a storm of 500 endpoints is served in
 * arrival order, each endpoint start to end, instead of by whoever retries luckiest. A waiting ticket
 * not seen for `forgetMs` leaves the line (the client gave up). `max` 0 admits everything.
 */
export class Admission {
  private readonly passes = new Map<string, Pass>();
  /** Waiting tickets, in arrival order (a Map keeps insertion order), with when each was last seen. */
  private readonly line = new Map<string, number>();

  constructor(readonly max: number, private readonly forgetMs: number, private readonly graceMs = 2000, private readonly now: () => number = Date.now) {}

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
    this.line.set(t, this.now());
    return { admitted: false, ticket: t, position: place + 1 };
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
    for (const [t, p] of this.passes) if (p.inFlight === 0 && now - p.idleSince > this.graceMs) this.passes.delete(t);
    for (const [t, seen] of this.line) if (now - seen > this.forgetMs) this.line.delete(t);
  }
}

const newTicket = (): string => randomBytes(9).toString('base64url');
