import type { ScrubConfig } from '../../src/config/server.js';
import type { Logger } from '../../src/log.js';
import type { Appliance } from '../appliance.js';

export interface ScrubService {
  close(): void;
}

/** The local store's background scrub (src/chunk/background-scrub.ts): a pass every `intervalSeconds` from start + 1 minute (0 = never). */
export function startScrubService(config: ScrubConfig, appliance: Appliance, log: Logger): ScrubService {
  if (config.intervalSeconds === 0) return { close: () => {} };
  const stop = new AbortController();
  let running = false;
  const run = async () => {
    if (running) return; // a slow pass is not stacked on itself
    running = true;
    try {
      const pass = await appliance.scrub(stop.signal);
      if (pass) log.info({ scrub: { chunks: pass.chunks, bytes: pass.bytes, quarantined: pass.quarantined.length, stopped: pass.stopped } }, 'chunk scrub pass done');
    } catch (err) {
      log.error({ err }, 'chunk scrub pass failed');
    } finally {
      running = false;
    }
  };
  const first = setTimeout(() => void run(), 60_000); // not in the start-up rush
  first.unref();
  const timer = setInterval(() => void run(), config.intervalSeconds * 1000);
  timer.unref();
  return {
    close: () => {
      clearTimeout(first);
      clearInterval(timer);
      stop.abort();
    },
  };
}
