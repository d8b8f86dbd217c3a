import type { EndpointRepo } from '../endpoint/model.js';
import type { MetaRepo } from './repo.js';

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

export function pruneMeta(meta: MetaRepo, endpoints: EndpointRepo, now: Date, p: PrunePolicy): PruneCounts {
  const ago = (s: number) => new Date(now.getTime() - s * 1000).toISOString();
  return {
    // A boot token is good for one session: once used or expired it proves nothing any more.
    bootTokens: endpoints.pruneBootTokens(now.toISOString()),
    tokens: meta.pruneTokens(ago(p.tokensSeconds)),
    events: endpoints.pruneEvents(ago(p.eventsSeconds)),
    pending: endpoints.prunePending(ago(p.pendingSeconds)),
  };
}
