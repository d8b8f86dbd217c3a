import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Flash } from './html.js';

/**
 * Console sign-in sessions. The admin gives the token once; the browser then holds only a random
 * session id in an HttpOnly, SameSite=Strict cookie. The server keeps, per session, the hash of the
 * token it was opened with (every request checks that token is still valid: a revoked or expired
 * token ends its sessions), a CSRF token every form must carry, and messages for the next page.
 *
 * Sessions live in this server's memory: a restart signs everyone out, and behind a load balancer a
 * session belongs to the server it was opened on (sticky sessions). Ids are kept by their SHA-256,
 * so the table holds nothing a cookie could be made from.
 */
export interface ConsoleSession {
  csrf: string;
  /** SHA-256 (hex) of the admin token the session was opened with. */
  tokenHash: string;
  createdAt: number;
  lastSeen: number;
  flash: Flash[];
}

export interface SessionLimits {
  /** A session unused this long is over (default 30 minutes). */
  idleMs: number;
  /** A session is over this long after sign-in, used or not (default 12 hours). */
  maxMs: number;
  /** Sessions kept at once; the least recently used goes first (default 1000). */
  max: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = { idleMs: 30 * 60_000, maxMs: 12 * 3_600_000, max: 1000 };

export type Lookup = { session: ConsoleSession } | { expired: true } | undefined;

const key = (id: string): string => createHash('sha256').update(id).digest('hex');

export class SessionStore {
  private readonly sessions = new Map<string, ConsoleSession>();

  constructor(private readonly now: () => Date, readonly limits: SessionLimits = DEFAULT_SESSION_LIMITS) {}

  /** A new session: its id (the cookie's value) and the session. */
  open(tokenHash: string): { id: string; session: ConsoleSession } {
    const t = this.now().getTime();
    const id = randomBytes(32).toString('base64url');
    const session: ConsoleSession = { csrf: randomBytes(24).toString('base64url'), tokenHash, createdAt: t, lastSeen: t, flash: [] };
    this.sessions.set(key(id), session);
    while (this.sessions.size > this.limits.max) this.sessions.delete(this.sessions.keys().next().value!);
    return { id, session };
  }

  /** The session of a cookie value: live (and now touched), expired (and now gone), or unknown. */
  get(id: string | undefined): Lookup {
    if (!id) return undefined;
    const k = key(id);
    const s = this.sessions.get(k);
    if (!s) return undefined;
    const t = this.now().getTime();
    if (t - s.lastSeen > this.limits.idleMs || t - s.createdAt > this.limits.maxMs) {
      this.sessions.delete(k);
      return { expired: true };
    }
    s.lastSeen = t;
    // Most recently used last: the first key is the one to drop when full.
    this.sessions.delete(k);
    this.sessions.set(k, s);
    return { session: s };
  }

  /** Is the session still signed in (without counting this as a use: a live stream asks it)? */
  alive(id: string | undefined): boolean {
    const s = id ? this.sessions.get(key(id)) : undefined;
    const t = this.now().getTime();
    return !!s && t - s.lastSeen <= this.limits.idleMs && t - s.createdAt <= this.limits.maxMs;
  }

  close(id: string | undefined): void {
    if (id) this.sessions.delete(key(id));
  }

  get size(): number {
    return this.sessions.size;
  }
}

/** Constant-time comparison of a form's CSRF field with the session's. */
export function csrfMatches(expected: string, got: unknown): boolean {
  if (typeof got !== 'string') return false;
  const a = Buffer.from(expected);
  const b = Buffer.from(got);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The cookies of a request header (`a=1; b=2`). */
export function parseCookies(header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i <= 0) continue;
    const k = part.slice(0, i).trim();
    if (!(k in out)) out[k] = part.slice(i + 1).trim();
  }
  return out;
}
