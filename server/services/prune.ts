import type { RetentionConfig } from '../../src/config/server.js';
import type { Logger } from '../../src/log.js';
import type { Appliance } from '../appliance.js';

export interface PruneService {
  close(): void;
  /** The pass made at start (tests wait for it). */
  first: Promise<void>;
}

/** Prune on a timer (src/meta/prune.ts, then src/image/lifecycle.ts pruneAll): once at start, then every `intervalSeconds` (0 = never). */
export function startPruneService(config: RetentionConfig, appliance: Appliance, log: Logger): PruneService {
  if (config.intervalSeconds === 0) return { close: () => {}, first: Promise.resolve() };
  const run = async () => {
    try {
      const n = await appliance.prune();
      if (n.tokens + n.bootTokens + n.events + n.pending > 0) log.info({ pruned: n }, 'pruned old tokens, events and pending endpoints');
    } catch (err) {
      log.error({ err }, 'prune failed');
    }
    try {
      // Versions outside each image's retention policy, and deltas idle past retention.deltaIdleDays.
      const v = await appliance.pruneVersions();
      if (v.versions + v.deltaFiles > 0) log.info({ pruned: v }, 'pruned versions and idle deltas');
    } catch (err) {
      log.error({ err }, 'prune of versions failed');
    }
  };
  const first = run();
  const timer = setInterval(() => void run(), config.intervalSeconds * 1000);
  timer.unref();
  return { close: () => clearInterval(timer), first };
}
