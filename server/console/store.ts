import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { FastifyInstance } from 'fastify';
import type { GcResult, StoreUsage } from '../../src/gc/gc.js';
import { ago, button, bytes, html, plural } from './html.js';
import type { ConsoleKit } from './kit.js';

/**
 * Store: usage (the last garbage collection's measure), garbage collection (running, last result;
 * start a run or a dry run), and highlights of /metrics: requests by status class, heavy transfers,
 * commits, and the event loop's delay over the last minute (its own histogram: reading the scrape's
 * would reset what Prometheus measures).
 */
const WINDOW_MS = 60_000;

export async function storePages(app: FastifyInstance, kit: ConsoleKit, route: object): Promise<void> {
  const { ctx } = kit;
  const delay = monitorEventLoopDelay({ resolution: 50 });
  delay.enable();
  let last = { p50: 0, p99: 0, max: 0 };
  const toMs = (ns: number) => (Number.isFinite(ns) && delay.count > 0 ? Math.max(0, ns - 50e6) / 1e6 : 0);
  const roll = setInterval(() => {
    last = { p50: toMs(delay.percentile(50)), p99: toMs(delay.percentile(99)), max: toMs(delay.max) };
    delay.reset();
  }, WINDOW_MS);
  roll.unref();
  app.addHook('onClose', async () => {
    clearInterval(roll);
    delay.disable();
  });

  /** The run last started from this console (its result is kept by the server for a while). */
  let consoleRun: string | undefined;
  const sum = (name: string, pick: (labels: string) => boolean = () => true) => ctx.metrics.peek(name).filter((v) => pick(v.labels)).reduce((a, v) => a + v.value, 0);

  app.get('/store', route, async (req, reply) => {
    const now = ctx.now();
    const csrf = kit.csrf(req);
    const status = ctx.gc ? await ctx.gc.status() : null;
    // The newest of: the run last started here (a dry run too: it measures), the database's last run.
    const mine = ctx.gc && consoleRun ? (await ctx.gc.status(consoleRun)).result : null;
    const theirs = (status?.lock?.result ?? null) as GcResult | null;
    const lastRun = mine && (!theirs || mine.finishedAt >= theirs.finishedAt) ? mine : theirs;
    const usage: StoreUsage | null = lastRun?.usage ?? null;
    const requests = { all: sum('deskfuse_http_requests_total'), s2: sum('deskfuse_http_requests_total', (l) => /status="2/.test(l)), s4: sum('deskfuse_http_requests_total', (l) => /status="4/.test(l)), s5: sum('deskfuse_http_requests_total', (l) => /status="5/.test(l)) };
    const commits = ctx.metrics.peek('deskfuse_commits_total');
    const minute = delay.count > 0 ? { p50: toMs(delay.percentile(50)), p99: toMs(delay.percentile(99)), max: toMs(delay.max) } : last;
    const k = usage?.kinds;
    return kit.render(req, reply, {
      title: 'Store', nav: 'store',
      body: html`<section aria-labelledby="use-h"><h2 id="use-h">Usage</h2>
${usage && k ? html`<p class="muted">Measured by the garbage collection of ${ago(lastRun?.finishedAt, now)}.</p>
<table class="grid narrow"><tbody>
<tr><th scope="row">Chunks</th><td>${k.chunks.count}</td><td>${bytes(k.chunks.bytes)}</td></tr>
<tr><th scope="row">Layers</th><td>${k.layers.count}</td><td>${bytes(k.layers.bytes)}</td></tr>
<tr><th scope="row">Indexes</th><td>${k.indexes.count}</td><td>${bytes(k.indexes.bytes)}</td></tr>
<tr><th scope="row">Deltas</th><td>${k.deltas.count}</td><td>${bytes(k.deltas.bytes)}</td></tr>
<tr><th scope="row">Unreferenced</th><td>${k.unreferencedChunks.count + k.unreferencedBlobs.count}</td><td>${bytes(k.unreferencedChunks.bytes + k.unreferencedBlobs.bytes)}</td></tr>
<tr><th scope="row">Reclaimable now</th><td>${usage.reclaimable.count}</td><td>${bytes(usage.reclaimable.bytes)}</td></tr></tbody></table>
<table class="grid narrow"><thead><tr><th scope="col">Image</th><th scope="col">Chunks</th><th scope="col">Layers and indexes</th></tr></thead><tbody>
${usage.images.map((i) => html`<tr><th scope="row"><a href="/images/${encodeURIComponent(i.image)}">${i.image}</a></th><td>${bytes(i.chunks.bytes)}</td><td>${bytes(i.blobs.bytes)}</td></tr>`)}</tbody></table>`
    : html`<p class="empty">Not measured yet: a garbage collection (or its dry run) measures it.</p>`}</section>
<section aria-labelledby="gc-h"><h2 id="gc-h">Garbage collection</h2>
${status?.running ? html`<p role="status">Running ${status.running.dryRun ? '(dry run) ' : ''}: ${status.running.phase}, ${status.running.done} objects.</p>` : html`<p>Not running.</p>`}
${lastRun ? html`<p>Last run ${ago(lastRun.finishedAt, now)}${lastRun.dryRun ? ' (dry run)' : ''}: ${plural(lastRun.deleted.chunks, 'chunk')} and ${plural(lastRun.deleted.blobs, 'blob')} removed (${bytes(lastRun.deleted.bytes)}), ${plural(lastRun.candidates.chunks + lastRun.candidates.blobs, 'candidate')} for the next run, in ${lastRun.seconds.toFixed(1)} s.</p>` : ''}
${status?.lock?.holder ? html`<p class="muted">Lock: ${status.lock.holder}.</p>` : ''}
${ctx.gc ? html`<p>${button('/store/gc', 'Measure usage (dry run)', csrf, { fields: { dryRun: 1 } })} ${button('/store/gc', 'Run garbage collection', csrf, { danger: true, title: 'unreferenced old objects become candidates; the next run removes them' })}</p>` : ''}</section>
<section aria-labelledby="m-h"><h2 id="m-h">Server</h2><table class="grid narrow"><tbody>
<tr><th scope="row">HTTP requests</th><td id="m-requests">${requests.all} <span class="muted">(2xx ${requests.s2}, 4xx ${requests.s4}, 5xx ${requests.s5})</span></td></tr>
<tr><th scope="row">Heavy transfers</th><td>${ctx.admission.running} running, ${ctx.admission.waiting} waiting (limit ${ctx.admission.max})</td></tr>
<tr><th scope="row">Commits</th><td>${commits.length ? commits.map((c) => `${c.labels.replace(/outcome="([^"]*)"/, '$1')} ${c.value}`).join(', ') : 'none'}</td></tr>
<tr><th scope="row">Event-loop delay (last minute)</th><td>p50 ${minute.p50.toFixed(1)} ms, p99 ${minute.p99.toFixed(1)} ms, max ${minute.max.toFixed(1)} ms</td></tr>
<tr><th scope="row">Sessions signed in</th><td>${kit.store.size}</td></tr></tbody></table>
<p class="muted">All metrics: <code>/metrics</code> (Prometheus text; needs a token).</p></section>`,
    });
  });

  app.post('/store/gc', route, async (req, reply) => kit.act(req, reply, '/store', async () => {
    const gc = ctx.gc;
    if (!gc) return 'Garbage collection is not set up on this server.';
    const dryRun = kit.form(req).dryRun === '1';
    let started!: (run: string) => void;
    const running = new Promise<string>((r) => (started = r));
    let didStart = false;
    const done = gc.run({ dryRun, onStarted: (run) => ((didStart = true), started(run)) });
    done.catch((err: unknown) => { if (didStart) app.log.error({ err }, 'garbage collection failed'); });
    const run = await Promise.race([running, done.then((r) => r.run)]);
    consoleRun = run;
    return `${dryRun ? 'Dry run' : 'Garbage collection'} ${run} started: reload this page for its result.`;
  }));
}
