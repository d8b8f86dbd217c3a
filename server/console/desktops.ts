import type { FastifyInstance, FastifyRequest } from 'fastify';
import { TokenRegistry } from '../../src/auth/registry.js';
import { desktopScope } from '../../src/desktop/desktops.js';
import { dfError } from '../../src/errors.js';
import type { VdiSessionView } from '../../src/vdi/sessions.js';
import { ago, button, bytes, csrfField, html, seg, type Raw } from './html.js';
import type { ConsoleKit } from './kit.js';

/**
 * Desktops (mode, line, head, lease with break, tokens) and VDI sessions (commit, discard, and their
 * live counters: the page's script reads /vdi/live.json every few seconds).
 */

const liveOf = (s: VdiSessionView) => ({
  id: s.id, state: s.state, connections: s.connections,
  changed: s.increment?.changed ?? null,
  bytesWritten: s.increment?.live?.bytesWritten ?? null,
  flushes: s.increment?.live?.flushes ?? null,
  lastFlushAt: s.increment?.live?.lastFlushAt ?? null,
});

function sessionRows(list: VdiSessionView[], csrf: string, now: Date, showDesktop: boolean): Raw {
  if (list.length === 0) return html`<p class="empty">No VDI session.</p>`;
  return html`<table class="grid" id="vdi" data-poll="/vdi/live.json"><thead><tr><th scope="col">Session</th>${showDesktop ? html`<th scope="col">Desktop</th>` : ''}<th scope="col">State</th><th scope="col">Base</th><th scope="col">Holder</th><th scope="col">Clients</th><th scope="col">Chunks changed</th><th scope="col">Written</th><th scope="col">Flushes</th><th scope="col">Started</th><th scope="col">Outcome</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>
${list.map((s) => {
    const l = liveOf(s);
    const open = s.state === 'open' || s.state === 'failed';
    const o = s.outcome;
    return html`<tr id="vdi-${s.id}" data-session="${s.id}"><th scope="row" class="mono">${s.id}</th>${showDesktop ? html`<td><a href="/desktops/${seg(s.desktop)}">${s.desktop}</a></td>` : ''}
<td data-f="state"><span class="state ${s.state}">${s.state}</span></td><td>${s.base}</td><td class="small">${s.holder}</td><td data-f="connections">${l.connections}</td>
<td data-f="changed">${l.changed ?? '–'}</td><td data-f="bytesWritten">${l.bytesWritten !== null ? bytes(l.bytesWritten) : '–'}</td><td data-f="flushes">${l.flushes ?? '–'}</td>
<td>${ago(s.createdAt, now)}</td><td class="small">${o ? `${o.kind}${o.version !== null ? ` → ${o.version}` : ''}${o.conflictRef ? ` (${o.conflictRef})` : ''}` : s.failure ?? ''}</td>
<td>${open ? html`${button(`/vdi/${s.id}/commit`, 'Commit', csrf, { title: `commit session ${s.id}'s cloud increment to ${s.desktop}` })} ${button(`/vdi/${s.id}/discard`, 'Discard', csrf, { danger: true, title: `discard session ${s.id}'s changes` })}` : ''}</td></tr>`;
  })}</tbody></table>`;
}

export async function desktopPages(app: FastifyInstance, kit: ConsoleKit, route: object): Promise<void> {
  const { ctx } = kit;
  const { desktops } = ctx;
  const { sessions } = ctx.vdi;
  const tokens = new TokenRegistry({ meta: ctx.meta, desktops, now: ctx.now, log: app.log });
  const name = (req: FastifyRequest) => (req.params as { name: string }).name;

  app.get('/desktops', route, async (req, reply) => {
    const now = ctx.now();
    const list = await desktops.list();
    const open = await sessions.list({ states: ['open', 'committing', 'failed'] });
    const endpoints = await ctx.endpoints.list();
    return kit.render(req, reply, {
      title: 'Desktops', nav: 'desktops',
      body: list.length === 0 ? html`<p class="empty">No desktop yet: <code>deskfuse desktop create NAME --image IMAGE</code>.</p>` : html`<table class="grid"><thead><tr><th scope="col">Desktop</th><th scope="col">Image</th><th scope="col">Mode</th><th scope="col">Line</th><th scope="col">Head</th><th scope="col">Lease</th><th scope="col">Endpoints</th><th scope="col">VDI</th></tr></thead><tbody>
${list.map((d) => html`<tr><th scope="row"><a href="/desktops/${seg(d.name)}">${d.name}</a></th><td><a href="/images/${seg(d.image)}">${d.image}</a></td><td>${d.mode}</td>
<td>${d.ref ?? html`follows ${d.follows}`}</td><td>${d.head}</td><td>${d.lease ? html`${d.lease.holder} <span class="muted">until ${ago(d.lease.expiresAt, now)}</span>` : html`<span class="muted">free</span>`}</td>
<td>${endpoints.filter((e) => e.desktop === d.name).length}</td><td>${open.filter((s) => s.desktop === d.name).length || ''}</td></tr>`)}</tbody></table>`,
    });
  });

  const desktopPage = async (req: FastifyRequest, minted?: { token: string; expiresAt: string }) => {
    const n = name(req);
    const d = await desktops.view(n);
    const now = ctx.now();
    const csrf = kit.csrf(req);
    const scoped = (await tokens.list()).filter((t) => t.scope === desktopScope(n));
    const list = await Promise.all((await sessions.list({ desktop: n })).slice(-20).reverse().map((s) => (s.state === 'open' ? sessions.show(s.id) : s)));
    const endpoints = (await ctx.endpoints.list()).filter((e) => e.desktop === n);
    const base = `/desktops/${seg(n)}`;
    return {
      title: `Desktop ${n}`, nav: 'desktops' as const,
      body: html`${minted ? html`<div class="flash ok secret" role="status"><p>New token for desktop ${n} (expires ${minted.expiresAt}). It is shown this once: copy it now.</p><p><label for="minted">Token</label> <input id="minted" readonly value="${minted.token}" class="wide mono"></p></div>` : ''}
<dl class="facts"><dt>Image</dt><dd><a href="/images/${seg(d.image)}">${d.image}</a></dd><dt>Mode</dt><dd>${d.mode}</dd>
<dt>Line</dt><dd>${d.ref ? html`<span class="ref desktop">${d.ref}</span> (made from ${d.follows})` : html`follows <span class="ref">${d.follows}</span>`}</dd>
<dt>Head</dt><dd><a href="/images/${seg(d.image)}/versions/${d.head}">version ${d.head}</a></dd>
<dt>Endpoints</dt><dd>${endpoints.length ? endpoints.map((e) => html`<a href="/endpoints/${seg(e.id)}">${e.name}</a> `) : 'none'}</dd></dl>
<section aria-labelledby="lease-h"><h2 id="lease-h">Lease</h2>
${d.lease ? html`<dl class="facts" id="lease"><dt>Holder</dt><dd>${d.lease.holder}</dd><dt>Since</dt><dd>${ago(d.lease.since, now)}</dd><dt>Expires</dt><dd>${ago(d.lease.expiresAt, now)}</dd><dt>Fencing</dt><dd>${d.lease.fencing}</dd></dl>
<p>${button(`${base}/lease/break`, 'Break the lease', csrf, { danger: true, title: "e.g. of a dead endpoint: the holder's later commits become conflicts" })}</p>` : html`<p class="empty" id="lease">Free: no endpoint or VDI session holds it.</p>`}</section>
<section aria-labelledby="tok-h"><h2 id="tok-h">Tokens</h2>
${scoped.length ? html`<table class="grid"><thead><tr><th scope="col">Id</th><th scope="col">Created</th><th scope="col">Expires</th><th scope="col">Last used</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>
${scoped.map((t) => html`<tr><td class="mono">${t.id}</td><td>${ago(t.createdAt, now)}</td><td>${ago(t.expiresAt, now)}</td><td>${ago(t.lastUsedAt, now)}</td><td>${button(`${base}/tokens/${seg(t.id)}/revoke`, 'Revoke', csrf, { danger: true })}</td></tr>`)}</tbody></table>` : html`<p class="empty">No token of this desktop (boot sessions get their own, short-lived).</p>`}
<form method="post" action="${base}/tokens" class="row">${csrfField(csrf)}<label for="ttl">Valid for days</label><input id="ttl" name="days" type="number" min="1" max="365" value="30" class="num"><button type="submit">New token</button></form></section>
<section aria-labelledby="vdi-h"><h2 id="vdi-h">VDI sessions</h2>${sessionRows(list, csrf, now, false)}</section>`,
    };
  };

  app.get('/desktops/:name', route, async (req, reply) => kit.render(req, reply, await desktopPage(req)));

  app.post('/desktops/:name/lease/break', route, async (req, reply) => kit.act(req, reply, `/desktops/${seg(name(req))}`, async () => {
    const r = await desktops.breakLease(name(req), 'admin');
    return r.broken ? `Lease of ${r.broken.holder} on ${name(req)} broken (its later commits become conflicts).` : `${name(req)} had no lease.`;
  }));

  // The new token is shown in this answer only (never in a URL, never kept for a later page).
  app.post('/desktops/:name/tokens', route, async (req, reply) => {
    const days = Number(kit.form(req).days ?? 30);
    if (!Number.isInteger(days) || days < 1 || days > 365) {
      return kit.act(req, reply, `/desktops/${seg(name(req))}`, async () => { throw dfError('DF_ERR_BAD_REQUEST', 'days: 1 to 365'); });
    }
    const t = await tokens.mint(desktopScope(name(req)), days * 86400);
    return kit.render(req, reply, { ...(await desktopPage(req, t)), status: 201 });
  });

  app.post('/desktops/:name/tokens/:id/revoke', route, async (req, reply) => kit.act(req, reply, `/desktops/${seg(name(req))}`, async () => {
    const { id } = req.params as { id: string };
    const known = (await tokens.list()).find((t) => t.id === id);
    if (!known || known.scope !== desktopScope(name(req))) throw dfError('DF_ERR_TOKEN_NOT_FOUND', `desktop ${name(req)} has no token ${id}`);
    await tokens.revoke(id, 'admin');
    return `Token ${id} revoked.`;
  }));

  app.get('/vdi', route, async (req, reply) => {
    const q = req.query as { all?: string };
    const list = await Promise.all((await sessions.list(q.all ? {} : { states: ['open', 'committing', 'failed'] })).reverse().slice(0, 200).map((s) => (s.state === 'open' ? sessions.show(s.id) : s)));
    return kit.render(req, reply, {
      title: 'VDI sessions', nav: 'vdi',
      body: html`<p>${q.all ? html`All sessions (newest 200). <a href="/vdi">Only unfinished ones</a>` : html`Unfinished sessions. <a href="/vdi?all=1">All, finished ones too</a>`}</p>${sessionRows(list, kit.csrf(req), ctx.now(), true)}`,
    });
  });

  app.get('/vdi/live.json', route, async (_req, reply) => {
    const open = await sessions.list({ states: ['open', 'committing', 'failed'] });
    reply.header('cache-control', 'no-store');
    return { sessions: (await Promise.all(open.map((s) => (s.state === 'open' ? sessions.show(s.id) : s)))).map(liveOf) };
  });

  const back = (req: FastifyRequest) => {
    try {
      const u = req.headers.referer ? new URL(req.headers.referer) : undefined;
      if (u && u.host === req.headers.host && (u.pathname.startsWith('/vdi') || u.pathname.startsWith('/desktops/'))) return u.pathname + u.search;
    } catch { /* no usable referer */ }
    return '/vdi';
  };
  const id = (req: FastifyRequest) => (req.params as { id: string }).id;
  const checkId = (s: string) => {
    if (!/^[0-9a-f]{10}$/.test(s)) throw dfError('DF_ERR_BAD_REQUEST', 'not a VDI session id');
  };
  app.post('/vdi/:id/commit', route, async (req, reply) => kit.act(req, reply, back(req), async () => {
    checkId(id(req));
    const s = await sessions.commit(id(req), 'admin', 'admin', false);
    const o = s.outcome;
    return `Session ${s.id} ${o?.kind === 'conflict' ? `kept as a conflict: ${o.conflictRef}` : o?.kind === 'unchanged' ? 'had no changes' : `committed as version ${o?.version ?? '?'}`}.`;
  }));
  app.post('/vdi/:id/discard', route, async (req, reply) => kit.act(req, reply, back(req), async () => {
    checkId(id(req));
    const s = await sessions.discard(id(req), 'admin', false);
    return `Session ${s.id} discarded; the lease on ${s.desktop} is released.`;
  }));
}
