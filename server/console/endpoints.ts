import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { BootEvent, EndpointRow } from '../../src/endpoint/model.js';
import { BOOT_METHODS, ENDPOINT_MODES, ENDPOINT_STATES } from '../../src/endpoint/model.js';
import { ago, button, bytes, csrfField, html, plural, raw, seg, type Raw } from './html.js';
import { LIVE_PING_MS, type ConsoleKit } from './kit.js';
import { parseCookies } from './session.js';

/**
 * Endpoints: the live table (every endpoint, its state, desktop, firmware, boot method, the phase of
 * its boot right now, its last sync and last error; filtered as you type; rows change as boot events
 * arrive over Server-Sent Events), and one endpoint's page (approve, assign, disable, reprovision,
 * delete; its boots as timelines).
 */

/** The phase a boot is in now, from its newest event, as the table shows it. */
export function phaseOf(ev: BootEvent | undefined): { label: string; cls: string } {
  if (!ev) return { label: '–', cls: 'idle' };
  const d = ev.detail;
  switch (ev.phase) {
    case 'syncing': {
      const pct = typeof d.percent === 'number' ? ` ${Math.floor(d.percent)}%` : '';
      return { label: `syncing${pct}`, cls: 'busy' };
    }
    case 'script': return { label: `script → ${String(d.decision ?? '?')}`, cls: d.decision === 'agent' ? 'busy' : 'idle' };
    case 'dhcp': case 'tftp': case 'kernel': case 'initrd': case 'agent': return { label: ev.phase, cls: 'busy' };
    case 'synced': return { label: 'synced', cls: 'ok' };
    case 'committed': return { label: d.conflict ? 'committed (conflict)' : 'committed', cls: d.conflict ? 'warn' : 'ok' };
    case 'local': return { label: 'local', cls: 'ok' };
    case 'poweroff': return { label: 'power-off', cls: 'idle' };
    case 'enrol': return { label: 'enrol', cls: 'warn' };
    case 'error': case 'refused': return { label: ev.phase, cls: 'bad' };
  }
  return { label: ev.phase, cls: 'idle' };
}

const lastError = (e: EndpointRow): string => (e.lastSync?.result === 'error' ? e.lastSync.error ?? 'error' : '');

/** The words a row is found by (the filter box matches every word against them). */
const searchText = (e: EndpointRow): string => [e.name, e.id, ...e.macs, e.state, e.desktop ?? '', e.firmware ?? '', e.bootMethod, e.mode].join(' ').toLowerCase();

export function endpointRow(e: EndpointRow, ev: BootEvent | undefined, csrf: string, now: Date): Raw {
  const ph = phaseOf(ev);
  const ls = e.lastSync;
  return html`<tr id="ep-${e.id}" data-search="${searchText(e)}" data-state="${e.state}">
<th scope="row"><a href="/endpoints/${seg(e.id)}">${e.name}</a></th><td class="mono">${e.macs.join(' ')}</td>
<td><span class="state ${e.state}">${e.state}</span></td><td>${e.desktop ?? html`<span class="muted">none</span>`}</td>
<td>${e.firmware ?? '–'}</td><td>${e.bootMethod}</td><td><span class="phase ${ph.cls}">${ph.label}</span>${ev ? html` ${ago(ev.at, now)}` : ''}</td>
<td>${ls && ls.result === 'ok' ? html`${ago(ls.at, now)}${ls.version !== undefined ? html` <span class="muted">v${ls.version}</span>` : ''}${ls.seconds !== undefined ? ` · ${ls.seconds.toFixed(1)} s` : ''}${ls.bytes !== undefined ? ` · ${bytes(ls.bytes)}` : ''}` : html`<span class="muted">never</span>`}</td>
<td class="err">${lastError(e)}</td>
<td>${e.state === 'pending' ? button(`/endpoints/${seg(e.id)}/approve`, 'Approve', csrf, { title: `approve ${e.name}` }) : ''}</td></tr>`;
}

/** Newest event per endpoint (and per MAC, for machines not enrolled yet). */
function newestByEndpoint(events: BootEvent[]): Map<string, BootEvent> {
  const m = new Map<string, BootEvent>();
  for (const ev of events) {
    const k = ev.endpoint ?? ev.mac;
    const had = m.get(k);
    if (!had || had.seq < ev.seq) m.set(k, ev);
  }
  return m;
}

/** A boot's events (oldest first) split into boots: a new boot starts at a DHCP request after anything else. */
export function splitBoots(events: BootEvent[]): BootEvent[][] {
  const boots: BootEvent[][] = [];
  let cur: BootEvent[] = [];
  for (const ev of [...events].sort((a, b) => a.seq - b.seq)) {
    const prev = cur.at(-1);
    if (prev && ((ev.phase === 'dhcp' && prev.phase !== 'dhcp') || (ev.phase === 'script' && !['dhcp', 'tftp'].includes(prev.phase)))) {
      boots.push(cur);
      cur = [];
    }
    cur.push(ev);
  }
  if (cur.length) boots.push(cur);
  return boots;
}

/** One boot as a bar: each phase from its first event to the next phase's (the README's phase tables, drawn). */
export function timeline(boot: BootEvent[]): Raw {
  const t0 = Date.parse(boot[0]!.at);
  const marks: Array<{ phase: string; t: number; ev: BootEvent }> = [];
  for (const ev of boot) {
    const t = (Date.parse(ev.at) - t0) / 1000;
    if (marks.at(-1)?.phase !== ev.phase) marks.push({ phase: ev.phase, t, ev });
  }
  const total = Math.max(marks.at(-1)!.t, 0.001);
  const W = 600;
  const segs = marks.map((m, i) => {
    const end = marks[i + 1]?.t ?? total;
    const x = (m.t / total) * (W - 4);
    const w = Math.max(((end - m.t) / total) * (W - 4), 3);
    return `<rect class="ph-${m.phase}" x="${x.toFixed(1)}" y="0" width="${w.toFixed(1)}" height="18"><title>${m.phase} at +${m.t.toFixed(2)} s</title></rect>`;
  }).join('');
  return html`<figure class="timeline"><svg viewBox="0 0 ${W} 18" width="${W}" height="18" role="img" aria-label="${marks.map((m) => `${m.phase} +${m.t.toFixed(1)}s`).join(', ')}">${raw(segs)}</svg>
<figcaption><ol class="phases">${marks.map((m) => html`<li><span class="key ph-${m.phase}"></span>${phaseOf(m.ev).label} <span class="muted">+${m.t.toFixed(2)} s</span></li>`)}</ol>
<span class="muted">${new Date(t0).toISOString().replace('T', ' ').slice(0, 19)} UTC · ${total.toFixed(2)} s</span></figcaption></figure>`;
}

const detailText = (d: Record<string, unknown>): string => Object.entries(d).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ');

export async function endpointPages(app: FastifyInstance, kit: ConsoleKit, route: object): Promise<void> {
  const { ctx } = kit;
  const { endpoints } = ctx;
  const desktopOptions = async (selected: string | null) => {
    const names = (await ctx.desktops.list()).map((d) => d.name);
    return html`<option value=""${raw(selected === null ? ' selected' : '')}>none</option>${names.map((n) => html`<option${raw(n === selected ? ' selected' : '')}>${n}</option>`)}`;
  };

  app.get('/endpoints', route, async (req, reply) => {
    const q = req.query as { q?: string; state?: string };
    const now = ctx.now();
    const all = await endpoints.list();
    const newest = newestByEndpoint(await endpoints.recentEvents(undefined, 1000));
    const words = (q.q ?? '').toLowerCase().split(/\s+/).filter(Boolean);
    const shown = all.filter((e) => (!q.state || e.state === q.state) && words.every((w) => searchText(e).includes(w)));
    const csrf = kit.csrf(req);
    const counts = ENDPOINT_STATES.map((s) => [s, all.filter((e) => e.state === s).length] as const).filter(([, n]) => n > 0);
    return kit.render(req, reply, {
      title: 'Endpoints', nav: 'endpoints',
      body: html`<form method="get" action="/endpoints" class="filter" role="search">
<label for="q">Filter</label><input id="q" name="q" type="search" value="${q.q ?? ''}" placeholder="name, MAC, desktop, state…" data-filter="#endpoints tbody" autocomplete="off">
<label for="state">State</label><select id="state" name="state" data-filter-state="#endpoints tbody"><option value="">any</option>${ENDPOINT_STATES.map((s) => html`<option${raw(q.state === s ? ' selected' : '')}>${s}</option>`)}</select>
<button type="submit">Apply</button> <span class="muted" id="count" aria-live="polite">${plural(shown.length, 'endpoint')} shown of ${all.length}${counts.length ? ` (${counts.map(([s, n]) => `${n} ${s}`).join(', ')})` : ''}</span></form>
<p class="muted live" data-live="/console/events">Live: rows change as endpoints boot. <span id="live-state" aria-live="polite"></span></p>
<table id="endpoints" class="grid"><caption class="sr-only">Endpoints</caption><thead><tr><th scope="col">Name</th><th scope="col">MAC</th><th scope="col">State</th><th scope="col">Desktop</th><th scope="col">Firmware</th><th scope="col">Boot</th><th scope="col">Phase now</th><th scope="col">Last sync</th><th scope="col">Last error</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
<tbody>${shown.map((e) => endpointRow(e, newest.get(e.id) ?? e.macs.map((m) => newest.get(m)).find(Boolean), csrf, now))}</tbody></table>
${all.length === 0 ? html`<p class="empty">No endpoint yet. An endpoint appears here (pending) when it first network-boots, or add one by MAC with <code>deskfuse endpoint add MAC</code>.</p>` : ''}`,
    });
  });

  // The live table: each boot event (and each admin change made through this server) of an endpoint
  // sends its row, rendered. Open streams end when the server closes.
  const streams = new Set<import('node:http').ServerResponse>();
  app.addHook('preClose', async () => {
    for (const r of streams) r.end();
  });
  app.get('/console/events', route, async (req, reply) => {
    const sessionId = parseCookies(req.headers.cookie)[kit.cookieName];
    const csrf = kit.csrf(req);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-content-type-options': 'nosniff' });
    res.write(': open\n\n');
    streams.add(res);
    let queue = Promise.resolve();
    const sendRow = (key: string, ev: BootEvent | undefined) => {
      queue = queue.then(async () => {
        const e = await endpoints.get(key).catch(() => undefined);
        if (!e || res.writableEnded) return;
        const row = endpointRow(e, ev, csrf, ctx.now()).s.replace(/\n/g, '');
        res.write(`event: row\ndata: ${JSON.stringify({ id: e.id, html: row })}\n\n`);
      }).catch((err: unknown) => req.log.warn({ err }, 'console: an endpoint row could not be sent'));
    };
    const onEvent = (ev: BootEvent) => sendRow(ev.endpoint ?? ev.mac, ev);
    const onChange = (e: EndpointRow) => sendRow(e.id, undefined);
    endpoints.events.on('event', onEvent);
    endpoints.events.on('changed', onChange);
    // The stream ends with the session: the page then goes to the sign-in page.
    const ping = setInterval(() => {
      if (!kit.store.alive(sessionId)) {
        res.write('event: expired\ndata: {}\n\n');
        res.end();
        return;
      }
      res.write(': ping\n\n');
    }, LIVE_PING_MS);
    req.raw.on('close', () => {
      streams.delete(res);
      clearInterval(ping);
      endpoints.events.off('event', onEvent);
      endpoints.events.off('changed', onChange);
    });
  });

  app.get('/endpoints/:id', route, async (req, reply) => {
    const { id } = req.params as { id: string };
    const e = await endpoints.get(id);
    const events = await endpoints.recentEvents(e.id, 200);
    const boots = splitBoots(events).reverse().slice(0, 5);
    const csrf = kit.csrf(req);
    const now = ctx.now();
    const base = `/endpoints/${seg(e.id)}`;
    const ls = e.lastSync;
    return kit.render(req, reply, {
      title: `Endpoint ${e.name}`, nav: 'endpoints',
      body: html`<dl class="facts">
<dt>State</dt><dd><span class="state ${e.state}">${e.state}</span></dd><dt>MAC</dt><dd class="mono">${e.macs.join(', ')}</dd>
<dt>Id</dt><dd class="mono">${e.id}</dd><dt>Desktop</dt><dd>${e.desktop ? html`<a href="/desktops/${seg(e.desktop)}">${e.desktop}</a>` : 'none'}</dd>
<dt>Mode</dt><dd>${e.mode}</dd><dt>Boot method</dt><dd>${e.bootMethod}</dd><dt>Firmware</dt><dd>${e.firmware ?? 'unknown'}</dd>
<dt>Disk</dt><dd>${e.disk}${e.diskVersion !== null ? ` at version ${e.diskVersion}` : ''}</dd><dt>Disk secret</dt><dd>${e.secret ?? 'none'}</dd>
<dt>Last seen</dt><dd>${ago(e.lastSeen, now)}</dd>
<dt>Last sync</dt><dd>${ls ? html`${ls.result} (${ls.action}) ${ago(ls.at, now)}${ls.version !== undefined ? `, version ${ls.version}` : ''}${ls.seconds !== undefined ? `, ${ls.seconds.toFixed(2)} s` : ''}${ls.bytes !== undefined ? `, ${bytes(ls.bytes)}` : ''}${ls.error ? html` — <span class="err">${ls.error}</span>` : ''}` : 'never'}</dd>
<dt>Commit at shutdown</dt><dd>${e.commitRequested ? html`requested ${ago(e.commitRequested, now)}` : 'no order'}</dd></dl>
<section aria-labelledby="act"><h2 id="act">Actions</h2>
${e.state === 'pending' || e.state === 'disabled' ? html`<form method="post" action="${base}/approve" class="row">${csrfField(csrf)}<label for="ap-desktop">Desktop</label><select id="ap-desktop" name="desktop">${await desktopOptions(e.desktop)}</select><button type="submit">Approve</button></form>` : ''}
<form method="post" action="${base}/assign" class="row">${csrfField(csrf)}
<label for="as-name">Name</label><input id="as-name" name="name" value="${e.name}" required maxlength="64">
<label for="as-desktop">Desktop</label><select id="as-desktop" name="desktop">${await desktopOptions(e.desktop)}</select>
<label for="as-mode">Mode</label><select id="as-mode" name="mode">${ENDPOINT_MODES.map((m) => html`<option${raw(m === e.mode ? ' selected' : '')}>${m}</option>`)}</select>
<label for="as-boot">Boot method</label><select id="as-boot" name="bootMethod">${BOOT_METHODS.map((m) => html`<option${raw(m === e.bootMethod ? ' selected' : '')}>${m}</option>`)}</select>
<button type="submit">Save</button></form>
<p class="row">${e.state !== 'disabled' ? button(`${base}/disable`, 'Disable', csrf, { title: 'it boots its local disk and never gets a boot token' }) : ''}
${button(`${base}/reprovision`, 'Reprovision', csrf, { title: "its next boot rewrites the disk with a new secret" })}
<a class="button danger" href="${base}/delete">Delete…</a></p></section>
<section aria-labelledby="boots"><h2 id="boots">Boots</h2>${boots.length ? boots.map(timeline) : html`<p class="empty">No boot recorded yet.</p>`}</section>
<section aria-labelledby="evs"><h2 id="evs">Events</h2><table class="grid"><thead><tr><th scope="col">#</th><th scope="col">Phase</th><th scope="col">When</th><th scope="col">MAC</th><th scope="col">Detail</th></tr></thead>
<tbody>${[...events].reverse().slice(0, 60).map((ev) => html`<tr><td>${ev.seq}</td><td>${ev.phase}</td><td>${ago(ev.at, now)}</td><td class="mono">${ev.mac}</td><td class="mono small">${detailText(ev.detail)}</td></tr>`)}</tbody></table></section>`,
    });
  });

  const back = (req: FastifyRequest) => {
    const r = req.headers.referer;
    // Back where the form was (the list or the endpoint's page), only ever on this server.
    try {
      const u = r ? new URL(r) : undefined;
      if (u && u.host === req.headers.host && u.pathname.startsWith('/endpoints')) return u.pathname + u.search;
    } catch { /* no usable referer */ }
    return `/endpoints/${seg((req.params as { id: string }).id)}`;
  };
  const change = (f: Record<string, string>) => ({
    ...(f.name ? { name: f.name } : {}),
    ...(f.desktop !== undefined ? { desktop: f.desktop === '' ? null : f.desktop } : {}),
    ...(f.mode ? { mode: f.mode as EndpointRow['mode'] } : {}),
    ...(f.bootMethod ? { bootMethod: f.bootMethod as EndpointRow['bootMethod'] } : {}),
  });
  const key = (req: FastifyRequest) => (req.params as { id: string }).id;

  app.post('/endpoints/:id/approve', route, async (req, reply) => kit.act(req, reply, back(req), async () => {
    const e = await endpoints.approve(key(req), change(kit.form(req)), 'admin');
    return `Endpoint ${e.name} approved${e.desktop ? ` (desktop ${e.desktop})` : ' (no desktop yet: assign one)'}.`;
  }));
  app.post('/endpoints/:id/assign', route, async (req, reply) => kit.act(req, reply, back(req), async () => {
    const e = await endpoints.assign(key(req), change(kit.form(req)), 'admin');
    return `Endpoint ${e.name} saved: desktop ${e.desktop ?? 'none'}, mode ${e.mode}, boot method ${e.bootMethod}.`;
  }));
  app.post('/endpoints/:id/disable', route, async (req, reply) => kit.act(req, reply, back(req), async () => `Endpoint ${(await endpoints.disable(key(req), 'admin')).name} disabled.`));
  app.post('/endpoints/:id/reprovision', route, async (req, reply) => kit.act(req, reply, back(req), async () => `Endpoint ${(await endpoints.reprovision(key(req), 'admin')).name}: its next boot provisions its disk anew.`));

  app.get('/endpoints/:id/delete', route, async (req, reply) => {
    const e = await endpoints.get(key(req));
    return kit.render(req, reply, {
      title: `Delete endpoint ${e.name}?`, nav: 'endpoints',
      body: html`<form method="post" action="/endpoints/${seg(e.id)}/delete">${csrfField(kit.csrf(req))}
<p>Endpoint <strong>${e.name}</strong> (${e.macs.join(', ')}) is forgotten: its next boot is an unknown machine again (pending).</p>
<p><input type="checkbox" id="force" name="force" value="1"> <label for="force">Even while it holds a lease or is enrolled with a desktop (force)</label></p>
<p><button type="submit" class="danger">Delete ${e.name}</button> <a href="/endpoints/${seg(e.id)}">Cancel</a></p></form>`,
    });
  });
  app.post('/endpoints/:id/delete', route, async (req, reply) => {
    const f = kit.form(req);
    return kit.act(req, reply, (ok) => (ok ? '/endpoints' : `/endpoints/${seg(key(req))}`), async () => {
      const e = await endpoints.get(key(req));
      await ctx.lifecycle.deleteEndpoint(e.id, { force: f.force === '1', author: 'admin' });
      return `Endpoint ${e.name} deleted.`;
    });
  });
}
