import path from 'node:path';
import type { InjectOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import type { BootEvent } from '../../src/endpoint/model.js';
import { startInProcess, tempDir } from '../../test/helpers/server.js';
import { phaseOf, splitBoots } from './endpoints.js';
import { html, raw } from './html.js';
import { conflictBase, diffIndexes } from './images.js';
import { csrfMatches, parseCookies, SessionStore } from './session.js';

describe('console pieces', () => {
  it('escapes every value; nested html stays markup', () => {
    const name = '<img src=x onerror=alert(1)>"\'&';
    expect(html`<td title="${name}">${name}</td>`.s).toBe('<td title="&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;">&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;</td>');
    expect(html`<ul>${['a', '<b>'].map((x) => html`<li>${x}</li>`)}</ul>${raw('<hr>')}${null}${false}`.s).toBe('<ul><li>a</li><li>&lt;b&gt;</li></ul><hr>');
  });

  it('sessions end when idle, at their maximum age, and the oldest go when full', () => {
    let t = 0;
    const store = new SessionStore(() => new Date(t), { idleMs: 1000, maxMs: 5000, max: 2 });
    const a = store.open('h');
    t = 900;
    expect(store.get(a.id)).toHaveProperty('session');
    t = 1800; // 900 since its last use
    expect(store.alive(a.id)).toBe(true);
    expect(store.get(a.id)).toHaveProperty('session');
    t = 2801;
    expect(store.alive(a.id)).toBe(false);
    expect(store.get(a.id)).toEqual({ expired: true });
    expect(store.get(a.id)).toBeUndefined();
    const b = store.open('h');
    for (t = 3000; t <= 7000; t += 800) expect(store.get(b.id)).toHaveProperty('session');
    t = 8001; // used all along, but past its maximum age
    expect(store.get(b.id)).toEqual({ expired: true });
    const [c, d, e] = [store.open('h'), store.open('h'), store.open('h')];
    expect(store.size).toBe(2);
    expect(store.get(c.id)).toBeUndefined();
    expect(store.get(d.id)).toHaveProperty('session');
    store.close(e.id);
    expect(store.get(e.id)).toBeUndefined();
    expect(store.get(undefined)).toBeUndefined();
  });

  it('checks CSRF tokens in constant time and reads cookies', () => {
    expect(csrfMatches('abc', 'abc')).toBe(true);
    expect(csrfMatches('abc', 'abd')).toBe(false);
    expect(csrfMatches('abc', 'ab')).toBe(false);
    expect(csrfMatches('abc', undefined)).toBe(false);
    expect(csrfMatches('abc', ['abc'])).toBe(false);
    expect(parseCookies('a=1; b=x=y;c; a=2')).toEqual({ a: '1', b: 'x=y' });
    expect(parseCookies(undefined)).toEqual({});
  });

  it('diffs two chunk indexes: positions, bytes, what a disk fetches', () => {
    const g = { virtualSize: 10 * 4096 + 512, chunkSize: 4096 };
    const a = ChunkIndex.empty(g);
    const id = (n: number) => Buffer.alloc(32, n);
    a.set(0, id(1));
    a.set(1, id(2));
    const b = a.clone();
    b.set(1, id(1)); // moved: the disk has it at 0
    b.set(3, id(3)); // new data where a was zero
    b.set(10, id(4)); // the short last chunk
    b.set(0, Buffer.alloc(32)); // zeroed
    expect(diffIndexes(a, b, 1, 2)).toEqual({ a: 1, b: 2, chunks: 11, positions: 4, bytes: 3 * 4096 + 512, fetch: 2, fetchBytes: 4096 + 512, added: 2, zeroed: 1 });
    expect(conflictBase('conflicts/desktops/alice/20261207T101010-000Z')).toBe('desktops/alice');
    expect(conflictBase('conflicts/main/20261207T101010-000Z')).toBe('main');
  });

  it('names the phase a boot is in, and splits events into boots', () => {
    const ev = (seq: number, phase: BootEvent['phase'], detail: Record<string, unknown> = {}): BootEvent => ({ seq, endpoint: 'e', mac: 'm', phase, at: new Date(seq * 1000).toISOString(), detail });
    expect(phaseOf(ev(1, 'syncing', { percent: 42.7 })).label).toBe('syncing 42%');
    expect(phaseOf(ev(1, 'script', { decision: 'agent' }))).toEqual({ label: 'script → agent', cls: 'busy' });
    expect(phaseOf(ev(1, 'committed', { conflict: 'conflicts/x/1' })).cls).toBe('warn');
    expect(phaseOf(undefined).label).toBe('–');
    const boots = splitBoots([ev(1, 'dhcp'), ev(2, 'dhcp'), ev(3, 'tftp'), ev(4, 'script'), ev(5, 'agent'), ev(6, 'synced'), ev(7, 'local'), ev(8, 'dhcp'), ev(9, 'script'), ev(10, 'local'), ev(11, 'script')]);
    expect(boots.map((b) => b.map((e) => e.seq))).toEqual([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11]]);
  });
});

describe('console sign-in and forms (HTTP)', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  const inject = (o: InjectOptions) => srv.appliance.app.inject(o);
  const form = (o: Record<string, string>) => new URLSearchParams(o).toString();
  const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

  /** The login page's cookie and field, then the sign-in: the session cookie. */
  const signIn = async (token: string) => {
    const page = await inject({ method: 'GET', url: '/login' });
    const login = /deskfuse_login=([^;]+)/.exec(String(page.headers['set-cookie']))![1]!;
    const r = await inject({ method: 'POST', url: '/login', headers: { ...FORM, cookie: `deskfuse_login=${login}` }, payload: form({ _csrf: login, token, next: '/images' }) });
    return { r, cookie: /deskfuse_session=([^;]+)/.exec(String(r.headers['set-cookie']))?.[1] };
  };

  beforeAll(async () => {
    tmp = tempDir('df-console-http-');
    srv = await startInProcess(path.join(tmp.dir, 'data'));
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  it('sends pages to sign-in, a POST without a session gets 401, assets are public', async () => {
    const r = await inject({ method: 'GET', url: '/' });
    expect(r.statusCode).toBe(303);
    expect(r.headers.location).toBe('/login?next=%2F');
    expect((await inject({ method: 'POST', url: '/endpoints/x/disable', headers: FORM, payload: '_csrf=x' })).statusCode).toBe(401);
    const js = await inject({ method: 'GET', url: '/assets/console.js' });
    expect(js.statusCode).toBe(200);
    expect(js.headers['content-type']).toContain('text/javascript');
    expect((await inject({ method: 'GET', url: '/assets/../package.json' })).statusCode).not.toBe(200);
    // The API is unchanged: bearer tokens, JSON.
    expect((await inject({ method: 'GET', url: '/api/v1/images' })).statusCode).toBe(401);
  });

  it('signs in with an admin token only, into an HttpOnly SameSite=Strict cookie; pages carry a strict CSP', async () => {
    const { r, cookie } = await signIn(srv.token);
    expect(r.statusCode).toBe(303);
    expect(r.headers.location).toBe('/images');
    const set = ([] as string[]).concat(r.headers['set-cookie'] as string[]);
    expect(set.find((c) => c.startsWith('deskfuse_session='))).toMatch(/^deskfuse_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict$/);
    const page = await inject({ method: 'GET', url: '/images', headers: { cookie: `deskfuse_session=${cookie}` } });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-security-policy']).toContain("script-src 'self'");
    expect(page.headers['x-frame-options']).toBe('DENY');
    expect(page.headers['cache-control']).toBe('no-store');
    expect(page.payload).not.toContain(srv.token);

    // A desktop's token is refused: the console is the admin's.
    const minted = await inject({ method: 'POST', url: '/api/v1/tokens', headers: { authorization: `Bearer ${srv.token}` }, payload: { scope: 'hypervisor' } });
    const other = await signIn(minted.json().token);
    expect(other.r.statusCode).toBe(403);
    expect(other.r.payload).toContain('may not use the console');
    expect(other.cookie).toBeUndefined();

    // The sign-in form without its own cookie's value (a forged login) is refused.
    const forged = await inject({ method: 'POST', url: '/login', headers: FORM, payload: form({ _csrf: 'x', token: srv.token }) });
    expect(forged.statusCode).toBe(403);
    expect(forged.payload).toContain('DF_ERR_CSRF');
  });

  it('the live stream sends an endpoint\'s row, rendered, when it changes (and ends when the server closes)', async () => {
    const { cookie } = await signIn(srv.token);
    await srv.appliance.ctx.endpoints.add('52:54:00:00:00:09', { name: 'live1' });
    const res = await fetch(`${srv.url}/console/events`, { headers: { cookie: `deskfuse_session=${cookie}`, accept: 'text/event-stream' } });
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let text = dec.decode((await reader.read()).value);
    expect(text).toContain(': open');
    await srv.appliance.ctx.endpoints.assign('live1', { name: 'live-renamed' });
    while (!text.includes('event: row')) text += dec.decode((await reader.read()).value);
    const data = JSON.parse(/data: (.*)\n/.exec(text.slice(text.indexOf('event: row')))![1]!);
    expect(data.id).toBe('ep-525400000009');
    expect(data.html).toContain('>live-renamed</a>');
    // Left open: afterAll's close ends it (a stream that held the server open would time the hook out).
  });

  it('a revoked token ends the sessions it opened', async () => {
    const minted = (await inject({ method: 'POST', url: '/api/v1/tokens', headers: { authorization: `Bearer ${srv.token}` }, payload: { scope: 'admin' } })).json();
    const { cookie } = await signIn(minted.token);
    const headers = { cookie: `deskfuse_session=${cookie}` };
    expect((await inject({ method: 'GET', url: '/store', headers })).statusCode).toBe(200);
    expect((await inject({ method: 'DELETE', url: `/api/v1/tokens/${minted.id}`, headers: { authorization: `Bearer ${srv.token}` } })).statusCode).toBe(200);
    const after = await inject({ method: 'GET', url: '/store', headers });
    expect(after.statusCode).toBe(303);
    expect(after.headers.location).toBe('/login?expired=1&next=%2Fstore');
  });

  it('every form needs the session\'s CSRF token and this origin; an action redirects back with its outcome', async () => {
    const { cookie } = await signIn(srv.token);
    const headers = { ...FORM, cookie: `deskfuse_session=${cookie}` };
    const page = (await inject({ method: 'GET', url: '/endpoints', headers })).payload;
    const csrf = /name="_csrf" value="([^"]+)"/.exec(page)![1]!;
    await srv.appliance.ctx.endpoints.add('52:54:00:00:00:01', { name: 'pc1' });
    expect((await inject({ method: 'POST', url: '/endpoints/pc1/disable', headers, payload: form({}) })).statusCode).toBe(403);
    expect((await inject({ method: 'POST', url: '/endpoints/pc1/disable', headers: { ...headers, 'sec-fetch-site': 'cross-site' }, payload: form({ _csrf: csrf }) })).statusCode).toBe(403);
    expect((await srv.appliance.ctx.endpoints.get('pc1')).state).toBe('enrolled');
    const ok = await inject({ method: 'POST', url: '/endpoints/pc1/disable', headers: { ...headers, host: new URL(srv.url).host, origin: srv.url, 'sec-fetch-site': 'same-origin', referer: `${srv.url}/endpoints?q=pc` }, payload: form({ _csrf: csrf }) });
    expect(ok.statusCode).toBe(303);
    expect(ok.headers.location).toBe('/endpoints?q=pc');
    expect((await srv.appliance.ctx.endpoints.get('pc1')).state).toBe('disabled');
    const next = (await inject({ method: 'GET', url: '/endpoints?q=pc', headers })).payload;
    expect(next).toContain('Endpoint pc1 disabled.');
    // A failing action says why, with its code, and changes nothing.
    const bad = await inject({ method: 'POST', url: '/endpoints/pc1/assign', headers: { ...headers, host: new URL(srv.url).host, referer: `${srv.url}/endpoints/pc1` }, payload: form({ _csrf: csrf, desktop: 'nobody' }) });
    expect(bad.statusCode).toBe(303);
    expect((await inject({ method: 'GET', url: '/endpoints/pc1', headers })).payload).toContain('DF_ERR_DESKTOP_NOT_FOUND');
    // An unknown page is a page, not JSON.
    const missing = await inject({ method: 'GET', url: '/endpoints/nobody', headers });
    expect(missing.statusCode).toBe(404);
    expect(missing.headers['content-type']).toContain('text/html');
  });
});
