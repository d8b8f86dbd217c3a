import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hashToken } from '../../src/auth/tokens.js';
import { DeskfuseError, dfError } from '../../src/errors.js';
import type { AppContext } from '../context.js';
import { desktopPages } from './desktops.js';
import { endpointPages } from './endpoints.js';
import { html, page, type Flash, type Frame } from './html.js';
import { imagePages } from './images.js';
import { csrfMatches, DEFAULT_SESSION_LIMITS, parseCookies, SessionStore, type ConsoleSession, type SessionLimits } from './session.js';
import { storePages } from './store.js';
import type { ConsoleKit } from './kit.js';

/**
 * The web console, at `/` of the same server: server-rendered pages, plain forms (POST, then a
 * redirect back with a message), one small script for live updates (Server-Sent Events) and
 * filtering, one stylesheet. No build step, no framework, nothing from the internet.
 *
 * Sign-in: the admin token once (POST /login); the browser then holds a random session id in an
 * HttpOnly, SameSite=Strict cookie (server/console/session.ts). Every POST carries the session's
 * CSRF token and must come from this origin. Pages send a CSP that allows only this origin's
 * script and stylesheet. Nothing secret goes into a URL; minted tokens are shown once, in the page
 * that answers the POST.
 */
export const SESSION_COOKIE = 'deskfuse_session';
export const LOGIN_COOKIE = 'deskfuse_login';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A console route anyone may open (sign-in, assets). */
    consolePublic?: boolean;
  }
  interface FastifyRequest {
    consoleSession?: ConsoleSession;
    consoleSessionId?: string;
  }
}

export interface ConsoleOptions {
  sessions?: Partial<SessionLimits>;
}

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

export function assetsDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // server/console → assets; dist/server/console → ../../../server/console/assets
  const dir = [path.join(here, 'assets'), path.resolve(here, '../../../server/console/assets')].find((d) => existsSync(path.join(d, 'console.js')));
  if (!dir) throw dfError('DF_ERR_CONFIG', `the console's assets (server/console/assets) are missing next to ${here}`);
  return dir;
}

const errText = (err: unknown): string => (err instanceof DeskfuseError ? `${err.code}: ${err.message}` : (err as Error).message);

export const consoleRoutes = (ctx: AppContext, opts: ConsoleOptions = {}) => async (app: FastifyInstance) => {
  const store = new SessionStore(ctx.now, { ...DEFAULT_SESSION_LIMITS, ...opts.sessions });
  const dir = assetsDir();
  const assets = new Map([
    ['console.css', { type: 'text/css; charset=utf-8', body: readFileSync(path.join(dir, 'console.css')) }],
    ['console.js', { type: 'text/javascript; charset=utf-8', body: readFileSync(path.join(dir, 'console.js')) }],
  ]);

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 64 * 1024 }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });

  app.addHook('onSend', async (_req, reply) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) reply.header(k, v);
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
  });

  const secure = (req: FastifyRequest) => req.protocol === 'https';
  const cookie = (req: FastifyRequest, name: string, value: string, maxAge?: number) =>
    `${name}=${value}; Path=/; HttpOnly; SameSite=Strict${maxAge !== undefined ? `; Max-Age=${maxAge}` : ''}${secure(req) ? '; Secure' : ''}`;

  /** Is the admin token this session was opened with still valid? */
  const tokenValid = async (hash: string): Promise<boolean> => {
    const t = await ctx.meta.tokens.findToken(hash);
    return !!t && t.scope === 'admin' && (t.expiresAt === null || t.expiresAt > ctx.now().toISOString());
  };

  const signedOut = (req: FastifyRequest, reply: FastifyReply, why: 'expired' | 'signin') => {
    const accept = req.headers.accept ?? '';
    if (req.method === 'GET' && !accept.includes('text/event-stream') && !accept.includes('application/json')) {
      return reply.redirect(`/login?${why === 'expired' ? 'expired=1&' : ''}next=${encodeURIComponent(req.url)}`, 303);
    }
    return reply.status(401).type('text/html; charset=utf-8').send(page({
      title: 'Signed out', body: html`<p>${why === 'expired' ? 'Your session has ended.' : 'You are not signed in.'} <a href="/login">Sign in</a> again.</p>`,
    }));
  };

  // Who: the session cookie, on every console route but sign-in and assets.
  app.addHook('onRequest', async (req, reply) => {
    if (req.routeOptions.config?.consolePublic) return;
    const id = parseCookies(req.headers.cookie)[SESSION_COOKIE];
    const found = store.get(id);
    if (!found) return signedOut(req, reply, 'signin');
    if ('expired' in found) return signedOut(req, reply, 'expired');
    if (!(await tokenValid(found.session.tokenHash))) {
      store.close(id);
      return signedOut(req, reply, 'expired');
    }
    req.consoleSession = found.session;
    req.consoleSessionId = id;
  });

  // Every POST: from this origin, with the session's CSRF token (the login form: its own cookie's).
  app.addHook('preHandler', async (req, reply) => {
    if (req.method !== 'POST') return;
    const fetchSite = req.headers['sec-fetch-site'];
    const origin = req.headers.origin;
    const host = req.headers.host;
    const crossSite = (typeof fetchSite === 'string' && fetchSite !== 'same-origin' && fetchSite !== 'none')
      || (typeof origin === 'string' && origin !== 'null' && host !== undefined && new URL(origin).host !== host);
    const body = (req.body ?? {}) as Record<string, unknown>;
    const expected = req.consoleSession?.csrf ?? parseCookies(req.headers.cookie)[LOGIN_COOKIE];
    if (crossSite || !expected || !csrfMatches(expected, body._csrf)) {
      req.log.warn({ route: req.routeOptions.url, crossSite }, 'console: a form without a valid CSRF token was refused');
      return reply.status(403).type('text/html; charset=utf-8').send(page({
        title: 'Refused', ...(req.consoleSession ? { csrf: req.consoleSession.csrf } : {}),
        body: html`<p class="flash error" role="alert">DF_ERR_CSRF: this form did not come from this console page (its CSRF token is missing or stale). Nothing was changed. <a href="/">Reload the console</a> and try again.</p>`,
      }));
    }
  });

  // Errors on a page: an HTML page with the code and message (never a stack).
  app.setErrorHandler((err, req, reply) => {
    const status = err instanceof DeskfuseError ? err.status : ((err as { statusCode?: number }).statusCode ?? 500);
    if (status >= 500) req.log.error({ err }, 'console page failed');
    const s = req.consoleSession;
    reply.status(status).type('text/html; charset=utf-8').send(page({
      title: status === 404 ? 'Not found' : 'Error', ...(s ? { csrf: s.csrf } : {}),
      body: html`<p class="flash error" role="alert">${status >= 500 && !(err instanceof DeskfuseError) ? 'DF_ERR_INTERNAL: internal error' : errText(err)}</p><p><a href="/">Back to the console</a></p>`,
    }));
  });

  const takeFlash = (s: ConsoleSession): Flash[] => s.flash.splice(0);
  const kit: ConsoleKit = {
    ctx, store, cookieName: SESSION_COOKIE,
    csrf: (req) => req.consoleSession!.csrf,
    form: (req) => (req.body ?? {}) as Record<string, string>,
    render(req, reply, f) {
      const s = req.consoleSession!;
      const { status, ...frame } = f;
      return reply.status(status ?? 200).type('text/html; charset=utf-8').send(page({ ...frame, csrf: s.csrf, flash: takeFlash(s) }));
    },
    async act(req, reply, back, run) {
      const s = req.consoleSession!;
      let ok = false;
      try {
        s.flash.push({ kind: 'ok', text: await run() });
        ok = true;
      } catch (err) {
        if (!(err instanceof DeskfuseError)) req.log.error({ err }, 'console action failed');
        s.flash.push({ kind: 'error', text: err instanceof DeskfuseError ? errText(err) : 'DF_ERR_INTERNAL: internal error' });
      }
      return reply.redirect(typeof back === 'function' ? back(ok) : back, 303);
    },
  };

  const pub = { config: { public: true, consolePublic: true }, schema: { hide: true } } as const;
  const priv = { config: { public: true }, schema: { hide: true } } as const;

  app.get('/assets/:file', pub, async (req, reply) => {
    const a = assets.get((req.params as { file: string }).file);
    if (!a) throw dfError('DF_ERR_NOT_FOUND', 'no such asset');
    reply.header('cache-control', 'no-cache');
    return reply.type(a.type).send(a.body);
  });

  const safeNext = (next: unknown) => (typeof next === 'string' && /^\/(?![/\\])[^\s]*$/.test(next) && !next.startsWith('/login') ? next : '/endpoints');

  const loginPage = (req: FastifyRequest, reply: FastifyReply, o: { error?: string; status?: number; next?: string; expired?: boolean }) => {
    const token = parseCookies(req.headers.cookie)[LOGIN_COOKIE] ?? randomBytes(24).toString('base64url');
    reply.header('set-cookie', cookie(req, LOGIN_COOKIE, token, 3600));
    const flash: Flash[] = [
      ...(o.expired ? [{ kind: 'error' as const, text: 'Your session has ended: sign in again.' }] : []),
      ...(o.error ? [{ kind: 'error' as const, text: o.error }] : []),
    ];
    return reply.status(o.status ?? 200).type('text/html; charset=utf-8').send(page({
      title: 'Sign in', flash,
      body: html`<form method="post" action="/login" class="login">
<input type="hidden" name="_csrf" value="${token}"><input type="hidden" name="next" value="${o.next ?? '/endpoints'}">
<p><label for="token">Admin token</label><input id="token" name="token" type="password" autocomplete="current-password" required autofocus spellcheck="false"></p>
<p class="hint">The token in <code>admin.token</code> of the server's data directory, or one made by <code>deskfuse token create --scope admin</code>. It is sent once; the browser keeps only a session cookie.</p>
<p><button type="submit">Sign in</button></p></form>`,
    }));
  };

  app.get('/login', pub, async (req, reply) => {
    const q = req.query as { expired?: string; next?: string };
    return loginPage(req, reply, { expired: q.expired === '1', next: safeNext(q.next) });
  });

  app.post('/login', pub, async (req, reply) => {
    const body = kit.form(req);
    const next = safeNext(body.next);
    const token = typeof body.token === 'string' ? body.token.trim() : '';
    const found = token ? await ctx.meta.tokens.findToken(hashToken(token)) : undefined;
    if (!found || (found.expiresAt !== null && found.expiresAt <= ctx.now().toISOString())) {
      req.log.warn('console: sign-in refused (unknown or expired token)');
      return loginPage(req, reply, { error: 'DF_ERR_UNAUTHORIZED: that token is not valid (or has expired).', status: 401, next });
    }
    if (found.scope !== 'admin') return loginPage(req, reply, { error: `DF_ERR_FORBIDDEN: a token of scope ${found.scope} may not use the console (admin only).`, status: 403, next });
    const { id } = store.open(hashToken(token));
    req.log.info('console: signed in');
    reply.header('set-cookie', [cookie(req, SESSION_COOKIE, id), cookie(req, LOGIN_COOKIE, '', 0)]);
    return reply.redirect(next, 303);
  });

  app.post('/logout', priv, async (req, reply) => {
    store.close(req.consoleSessionId);
    reply.header('set-cookie', cookie(req, SESSION_COOKIE, '', 0));
    return reply.redirect('/login', 303);
  });

  app.get('/', priv, async (_req, reply) => reply.redirect('/endpoints', 303));

  await endpointPages(app, kit, priv);
  await imagePages(app, kit, priv);
  await desktopPages(app, kit, priv);
  await storePages(app, kit, priv);
};
