import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { ScrubConfig } from '../../src/config/server.js';
import type { Logger } from '../../src/log.js';
import type { Appliance } from '../appliance.js';

export interface ScrubService {
  close(): void;
}

/** Not in the start-up rush, whatever the schedule says. */
const MIN_DELAY_MS = 60_000;

/**
 * When the last pass ended is kept in `<data>/scrub-last.json`, so a restart does not start a pass
 * anew: a server restarted daily (or by an upgrade at 7:55) would otherwise read the whole store in
 * the first minutes, the minutes endpoints boot in. A store this server never scrubbed counts as
 * scrubbed now: every chunk was verified as it entered.
 */
export async function nextScrubDelay(stateFile: string, intervalSeconds: number, now: number): Promise<number> {
  let last: number | undefined;
  try {
    const at = Date.parse((JSON.parse(await fsp.readFile(stateFile, 'utf8')) as { at?: string }).at ?? '');
    if (Number.isFinite(at)) last = at;
  } catch {
    // absent or unreadable: as never scrubbed
  }
  if (last === undefined || last > now) {
    await recordScrub(stateFile, now);
    last = now;
  }
  return Math.max(MIN_DELAY_MS, last + intervalSeconds * 1000 - now);
}

export async function recordScrub(stateFile: string, at: number): Promise<void> {
  const tmp = `${stateFile}.tmp`;
  await fsp.writeFile(tmp, `${JSON.stringify({ at: new Date(at).toISOString() })}\n`);
  await fsp.rename(tmp, stateFile);
}

/** The local store's background scrub (src/chunk/background-scrub.ts): a pass every `intervalSeconds` after the last one ended (0 = never). */
export function startScrubService(config: ScrubConfig, dataDir: string, appliance: Appliance, log: Logger): ScrubService {
  if (config.intervalSeconds === 0) return { close: () => {} };
  const stop = new AbortController();
  const stateFile = path.join(dataDir, 'scrub-last.json');
  let timer: NodeJS.Timeout | undefined;
  const schedule = (ms: number) => {
    if (stop.signal.aborted) return;
    timer = setTimeout(() => void run(), ms);
    timer.unref();
  };
  const run = async () => {
    try {
      const pass = await appliance.scrub(stop.signal);
      if (pass) log.info({ scrub: { chunks: pass.chunks, bytes: pass.bytes, quarantined: pass.quarantined.length, stopped: pass.stopped } }, 'chunk scrub pass done');
      if (pass && !pass.stopped) await recordScrub(stateFile, Date.now());
    } catch (err) {
      log.error({ err }, 'chunk scrub pass failed');
    }
    schedule(config.intervalSeconds * 1000);
  };
  nextScrubDelay(stateFile, config.intervalSeconds, Date.now()).then(
    (ms) => {
      log.debug({ inSeconds: Math.round(ms / 1000) }, 'next chunk scrub pass');
      schedule(ms);
    },
    (err: unknown) => {
      log.error({ err }, 'chunk scrub schedule unreadable: a pass in one interval');
      schedule(config.intervalSeconds * 1000);
    },
  );
  return {
    close: () => {
      stop.abort();
      clearTimeout(timer);
    },
  };
}
