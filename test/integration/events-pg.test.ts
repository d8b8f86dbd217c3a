import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { loadServerConfig } from '../../src/config/server.js';
import { EVENT_CHANNEL } from '../../src/endpoint/endpoints.js';
import { sharedPostgres } from '../helpers/engines.js';
import { tempDir } from '../helpers/server.js';

/**
 * Issue 11: boot events recorded by one server reach the event-stream clients of every server
 * (PostgreSQL LISTEN/NOTIFY). Two servers on one real PostgreSQL, each with its own data directory;
 * a client follows B's /api/v1/events stream while A records events, small and past NOTIFY's payload limit.
 */
let tmp: ReturnType<typeof tempDir>;
let a: Appliance;
let b: Appliance;
let bUrl: string;
let adminToken: string;

beforeAll(async () => {
  tmp = tempDir('df-events-pg-');
  const db = await sharedPostgres('events');
  const open = (name: string, notifyLimit?: number) =>
    openAppliance(loadServerConfig({ flags: { data: path.join(tmp.dir, name), meta: db.url, logLevel: 'silent', nbdListen: 'off' } }), undefined, notifyLimit ? { notifyLimit } : {});
  a = await open('a', 300); // A publishes events past 300 bytes by number, as it would past PostgreSQL's 8000
  b = await open('b');
  adminToken = a.newAdminToken ?? b.newAdminToken!;
  expect(adminToken).toBeTruthy();
  expect(Boolean(a.newAdminToken) !== Boolean(b.newAdminToken)).toBe(true); // one admin token for the site
  bUrl = await b.app.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  tmp?.cleanup();
});

/** Follow B's event stream until `want` events for `mac` arrived (or the time runs out). */
async function follow(mac: string, want: number, during: () => Promise<void>): Promise<Array<{ seq: number; mac: string; phase: string; detail: Record<string, unknown> }>> {
  const ctl = new AbortController();
  const res = await fetch(`${bUrl}/api/v1/events?limit=1`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${adminToken}` }, signal: ctl.signal });
  expect(res.status).toBe(200);
  const got: Array<{ seq: number; mac: string; phase: string; detail: Record<string, unknown> }> = [];
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  const timer = setTimeout(() => ctl.abort(), 20_000);
  const reading = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += dec.decode(value, { stream: true });
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split('\n').find((l) => l.startsWith('data: '));
          if (!data) continue;
          const ev = JSON.parse(data.slice(6)) as (typeof got)[number];
          if (ev.mac === mac) got.push(ev);
          if (got.length >= want) {
            ctl.abort();
            return;
          }
        }
      }
    } catch (err) {
      if ((err as Error).name !== 'AbortError') throw err;
    }
  })();
  await new Promise((r) => setTimeout(r, 200)); // the stream is subscribed
  await during();
  await reading;
  clearTimeout(timer);
  return got;
}

describe('boot events across servers (PostgreSQL LISTEN/NOTIFY)', () => {
  it('an unknown MAC asking server A shows on the event stream of server B, in order', async () => {
    const mac = '02:00:00:00:aa:01';
    const evs = await follow(mac, 2, async () => {
      const r = await a.app.inject({ method: 'GET', url: `/boot/ipxe?mac=${mac}&platform=pcbios` });
      expect(r.statusCode).toBe(200);
    });
    expect(evs.map((e) => e.phase)).toEqual(['enrol', 'script']);
    expect(evs[1]!.seq).toBeGreaterThan(evs[0]!.seq);
  });

  it('an event larger than the payload limit travels as its number and arrives whole', async () => {
    const mac = '02:00:00:00:aa:02';
    const big = 'x'.repeat(1200);
    // what travels on the channel, as a third listener sees it
    const payloads: string[] = [];
    const unlisten = await a.ctx.meta.engine.listen(EVENT_CHANNEL, (p) => payloads.push(p));
    const evs = await follow(mac, 1, async () => {
      await a.ctx.endpoints.record('error', mac, { error: big });
    });
    expect(evs).toHaveLength(1);
    // the third listener has its own connection: its copy of the NOTIFY may come after B's
    const seen = () => payloads.some((p) => {
      const v = JSON.parse(p) as { seq?: number; ref?: boolean };
      return v.seq === evs[0]!.seq && v.ref === true;
    });
    for (let i = 0; i < 250 && !seen(); i++) await new Promise((r) => setTimeout(r, 20));
    await unlisten();
    expect(payloads.map((p) => JSON.parse(p) as unknown)).toContainEqual({ seq: evs[0]!.seq, ref: true });
    const stored = (await b.ctx.meta.endpoints.getEvent(evs[0]!.seq))!;
    expect(JSON.stringify(stored).length).toBeGreaterThan(300);
    expect(evs[0]).toEqual(stored);
    expect(String(evs[0]!.detail.error)).toMatch(/^x{200}/);
  });
});
