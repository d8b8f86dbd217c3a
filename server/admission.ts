import { randomBytes } from 'node:crypto';

/** The verdict on one heavy request: go (and call `release` when it is over), or wait in line. */
export type Admitted = { admitted: true; release: () => void } | { admitted: false; ticket: string; position: number };

/**
 * Admission for heavy transfers (batch fetches, deltas, chunk uploads): at most `max` at once. Past
 * that a request is refused at once (503 DF_ERR_BUSY, Retry-After) with a ticket and its place in
 * line; when it comes back with its ticket, the first tickets in line get the slots that freed, so a
 * storm of 500 endpoints is served in arrival order instead of by whoever retries luckiest. A ticket
 * not seen for `forgetMs` leaves the line (the client gave up). `max` 0 admits everything.
 */
export class Admission {
  private inFlight = 0;
  /** Waiting tickets, in arrival order (a Map keeps insertion order), with when each was last seen. */
  private readonly line = new Map<string, number>();

  constructor(readonly max: number, private readonly forgetMs: number, private readonly now: () => number = Date.now) {}

  /** Transfers running now and tickets waiting (metrics). */
  get running(): number {
    return this.inFlight;
  }
  get waiting(): number {
    this.forget();
    return this.line.size;
  }

  enter(ticket?: string): Admitted {
    if (this.max === 0) return this.admit();
    this.forget();
    const free = this.max - this.inFlight;
    const known = ticket !== undefined && this.line.has(ticket);
    const place = known ? [...this.line.keys()].indexOf(ticket) : this.line.size;
    // Slots go to the head of the line first: a newcomer gets one only past everyone waiting.
    if (free > 0 && place < free) {
      if (known) this.line.delete(ticket);
      return this.admit();
    }
    const t = known ? ticket : randomBytes(9).toString('base64url');
    this.line.set(t, this.now());
    return { admitted: false, ticket: t, position: place + 1 };
  }

  private admit(): Admitted {
    this.inFlight++;
    let done = false;
    return {
      admitted: true,
      release: () => {
        if (done) return;
        done = true;
        this.inFlight--;
      },
    };
  }

  private forget(): void {
    const old = this.now() - this.forgetMs;
    for (const [t, seen] of this.line) if (seen < old) this.line.delete(t);
  }
}
