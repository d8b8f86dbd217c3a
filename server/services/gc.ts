import type { GcConfig } from '../../src/config/server.js';
import { isDeskfuseError } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import type { Appliance } from '../appliance.js';

export interface GcService {
  close(): void;
}

/**
 * Garbage collection on a timer (src/gc/gc.ts): every `intervalSeconds` from start (0 = never). Every
 * server may run the timer: the database lock lets one run at a time, and the others skip their turn.
 */
export function startGcService(config: GcConfig, appliance: Appliance, log: Logger): GcService {
  if (config.intervalSeconds === 0) return { close: () => {} };
  const run = async () => {
    try {
      const r = await appliance.gc();
      log.info({ gc: { marked: r.marked, candidates: r.candidates, cancelled: r.cancelled, deleted: r.deleted, seconds: r.seconds } }, 'garbage collection done');
    } catch (err) {
      if (isDeskfuseError(err, 'DF_ERR_GC_RUNNING')) log.info({ holder: err.fields.holder }, 'garbage collection skipped: one is running');
      else log.error({ err }, 'garbage collection failed');
    }
  };
  const timer = setInterval(() => void run(), config.intervalSeconds * 1000);
  timer.unref();
  return { close: () => clearInterval(timer) };
}
