import type { FastifyRequest } from 'fastify';
import { desktopReader, isHypervisorScope, METRICS_SCOPE, type DesktopReader } from '../src/auth/scope.js';
import { hashToken } from '../src/auth/tokens.js';
import { scopeDesktop } from '../src/desktop/desktops.js';
import { dfError } from '../src/errors.js';
import type { Meta } from '../src/meta/repo.js';

/**
 * Who may call what. A token has a scope: `admin` (may do everything), `desktop:NAME` (an endpoint
 * or VDI session working on one desktop) or `hypervisor[:NAME]` (`vdi start` on a hypervisor host).
 * What a route needs is data: its route config `access`, else the first row of ACCESS_RULES matching
 * its method and route URL, else `admin` (a new route is admin-only until listed here).
 *
 *   any               every valid token but a metrics one (chunk traffic: content-addressed, verified on upload)
 *   metrics           a metrics token (or admin): GET /metrics, the one thing a metrics token may do
 *   hypervisor        a hypervisor token (or admin); the route itself keeps it to its own sessions
 *   desktop: PARAM    a token of the desktop named by route param PARAM
 *   image: PARAM      a token of a desktop whose image is named by route param PARAM, and of what
 *                     it names, only the desktop's line (src/auth/scope.ts):
 *     version: PARAM  the version in route param PARAM must be reachable from the line
 *     ref: PARAM      the ref in route param PARAM must be one of the line's refs
 *     rev: FIELD      the ref or version in query field FIELD, if given, likewise
 *   Lists on such routes (refs, versions, ref log) are filtered by the route with `req.reader`.
 */
export type Need = 'admin' | 'any' | 'hypervisor' | 'metrics' | { desktop: string } | { image: string; version?: string; ref?: string; rev?: string };

export interface AccessRule {
  methods: readonly string[];
  /** A route URL as registered (`/api/v1/images/:image/layers`), or a pattern over it. */
  url: string | RegExp;
  need: Need;
}

const READ = ['GET', 'HEAD'] as const;
const IMG = '/api/v1/images/:image';

export const ACCESS_RULES: readonly AccessRule[] = [
  { methods: [...READ, 'PUT'], url: '/chunks/:id', need: 'any' },
  { methods: ['POST'], url: /^\/api\/v1\/chunks\//, need: 'any' },
  // Its image: its line only (refs filtered, versions reachable from them), upload layers.
  { methods: READ, url: IMG, need: { image: 'image' } },
  { methods: READ, url: `${IMG}/resolve`, need: { image: 'image', rev: 'rev' } },
  { methods: READ, url: `${IMG}/versions`, need: { image: 'image', rev: 'ref' } },
  { methods: READ, url: /^\/api\/v1\/images\/:image\/versions\/:version(\/(layer|index|delta|manifest))?$/, need: { image: 'image', version: 'version' } },
  { methods: READ, url: `${IMG}/refs`, need: { image: 'image' } },
  { methods: READ, url: `${IMG}/refs/*`, need: { image: 'image', ref: '*' } },
  { methods: READ, url: `${IMG}/reflog`, need: { image: 'image', rev: 'ref' } },
  { methods: ['POST'], url: `${IMG}/layers`, need: { image: 'image' } },
  // Its desktop: read it, take and give back its lease, commit to it.
  { methods: READ, url: '/api/v1/desktops/:name', need: { desktop: 'name' } },
  { methods: ['POST', 'DELETE'], url: '/api/v1/desktops/:name/lease', need: { desktop: 'name' } },
  { methods: READ, url: '/api/v1/desktops/:name/signed-head', need: { desktop: 'name' } },
  { methods: ['POST'], url: '/api/v1/desktops/:name/commits', need: { desktop: 'name' } },
  // A hypervisor: start VDI sessions and follow its own (server/routes/vdi.ts checks "its own").
  { methods: ['POST', ...READ], url: '/api/v1/vdi/sessions', need: 'hypervisor' },
  { methods: READ, url: '/api/v1/vdi/sessions/:id', need: 'hypervisor' },
];

/** A token's use is noted at most once a minute (token list shows it): not one write per request. */
const TOUCH_EVERY_MS = 60_000;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** What this route needs, overriding ACCESS_RULES (default: the table, else admin). */
    access?: Need;
  }
  interface FastifyRequest {
    /** For a desktop token on an image route: what of the image it may see (routes filter lists with it). */
    reader?: DesktopReader;
  }
}

/** The bearer token → its scope; 401 when missing, unknown or expired. */
export async function authenticate(req: FastifyRequest, meta: Pick<Meta, 'tokens'>, now: Date): Promise<string> {
  const h = req.headers.authorization;
  const token = h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined;
  const found = token ? await meta.tokens.findToken(hashToken(token)) : undefined;
  if (!found) throw dfError('DF_ERR_UNAUTHORIZED', token ? 'the token is not valid' : 'send the token as "Authorization: Bearer <token>"');
  if (found.expiresAt !== null && found.expiresAt <= now.toISOString()) {
    throw dfError('DF_ERR_TOKEN_EXPIRED', `the token of scope ${found.scope} expired at ${found.expiresAt}; ask an admin for a new one`, { scope: found.scope, expiresAt: found.expiresAt });
  }
  await meta.tokens.touchToken(hashToken(token!), now.toISOString(), new Date(now.getTime() - TOUCH_EVERY_MS).toISOString());
  return found.scope;
}

export function needOf(method: string, url: string, configured: Need | undefined): Need {
  if (configured) return configured;
  const rule = ACCESS_RULES.find((r) => r.methods.includes(method) && (typeof r.url === 'string' ? r.url === url : r.url.test(url)));
  return rule?.need ?? 'admin';
}

/** Throws DF_ERR_FORBIDDEN unless `scope` satisfies what the route needs. */
export async function authorize(req: FastifyRequest, scope: string, meta: Pick<Meta, 'images' | 'desktops'>): Promise<void> {
  if (scope === 'admin' || req.is404) return;
  const url = req.routeOptions.url ?? '';
  const need = needOf(req.method, url, req.routeOptions.config?.access);
  const params = (req.params ?? {}) as Record<string, string | undefined>;
  const deny = (what?: string) => dfError('DF_ERR_FORBIDDEN', `a token of scope ${scope} may not ${req.method} ${url}${need === 'admin' ? ' (admin only)' : ''}${what ? `: ${what}` : ''}`, {
    scope, method: req.method, route: url,
  });
  if (scope === METRICS_SCOPE || need === 'metrics') {
    if (scope === METRICS_SCOPE && need === 'metrics') return;
    throw deny();
  }
  if (need === 'any') return;
  if (need === 'hypervisor') {
    if (isHypervisorScope(scope)) return;
    throw deny();
  }
  const desktop = scopeDesktop(scope);
  if (need === 'admin' || desktop === undefined) throw deny();
  if ('desktop' in need) {
    if (params[need.desktop] === desktop) return;
    throw deny();
  }
  const reader = await desktopReader(meta, scope);
  if (!reader || params[need.image] !== reader.image) throw deny();
  if (need.version !== undefined) {
    const v = params[need.version] ?? '';
    if (!/^\d+$/.test(v) || !(await reader.versionVisible(Number(v)))) throw deny(`version ${v} is not on the line of desktop ${desktop}`);
  }
  if (need.ref !== undefined && !reader.refVisible(params[need.ref] ?? '')) throw deny(`ref ${params[need.ref]} is not one desktop ${desktop} reads`);
  if (need.rev !== undefined) {
    const rev = (req.query as Record<string, unknown> | undefined)?.[need.rev];
    if (rev !== undefined && (typeof rev !== 'string' || !(await reader.revVisible(rev)))) throw deny(`${need.rev}=${String(rev)} is not on the line of desktop ${desktop}`);
  }
  req.reader = reader;
}
