import type { Meta } from './repo.js';

/**
 * Housekeeping of the tables anonymous and routine traffic grows: boot tokens (one per agent boot),
 * bearer tokens (one per boot session), boot events (several per boot) and pending endpoints (one
 * per unknown MAC). The server runs it on a timer (server/services/prune.ts); it is a plain function
 * so tests call it with the clock they like.
 */
export interface PrunePolicy {
  /** Boot events older than this go. */
  eventsSeconds: number;
  /** Tokens expired longer ago than this go (until then they answer "expired", not "unknown"). */
  tokensSeconds: number;
  /** Pending endpoints not seen for this long go. */
  pendingSeconds: number;
}

export interface PruneCounts {
  tokens: number;
  bootTokens: number;
  events: number;
  pending: number;
}

export async function pruneMeta(meta: Pick<Meta, 'tokens' | 'endpoints'>, now: Date, p: PrunePolicy): Promise<PruneCounts> {
  const ago = (s: number) => new Date(now.getTime() - s * 1000).toISOString();
  return {
    // A boot token is good for one session: once used or expired it proves nothing any more.
    bootTokens: await meta.endpoints.pruneBootTokens(now.toISOString()),
    tokens: await meta.tokens.pruneTokens(ago(p.tokensSeconds)),
    events: await meta.endpoints.pruneEvents(ago(p.eventsSeconds)),
    pending: await meta.endpoints.prunePending(ago(p.pendingSeconds)),
  };
}
