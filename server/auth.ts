import type { FastifyRequest } from 'fastify';
import { hashToken } from '../src/auth/tokens.js';
import { scopeDesktop } from '../src/desktop/desktops.js';
import { dfError } from '../src/errors.js';
import type { MetaRepo } from '../src/meta/repo.js';

/**
 * Who may call what. A token has a scope: `admin` (may do everything) or `desktop:NAME` (an
 * endpoint or VDI session working on one desktop). What a route needs is data: its route config
 * `access`, else the first row of ACCESS_RULES matching its method and route URL, else `admin`.
 *
 *   any               every valid token (chunk traffic: content-addressed, verified on upload)
 *   desktop: PARAM    a token of the desktop named by route param PARAM
 *   image: PARAM      a token of a desktop whose image is named by route param PARAM
 */
export type Need = 'admin' | 'any' | { desktop: string } | { image: string };

export interface AccessRule {
  methods: readonly string[];
  /** A route URL as registered (`/api/v1/images/:image/layers`), or a pattern over it. */
  url: string | RegExp;
  need: Need;
}

const READ = ['GET', 'HEAD'] as const;

export const ACCESS_RULES: readonly AccessRule[] = [
  { methods: [...READ, 'PUT'], url: '/chunks/:id', need: 'any' },
  { methods: ['POST'], url: /^\/api\/v1\/chunks\//, need: 'any' },
  // Its image: read anything (versions, layers, indexes, refs, and what later issues add), upload layers.
  { methods: READ, url: /^\/api\/v1\/images\/:image(\/|$)/, need: { image: 'image' } },
  { methods: ['POST'], url: '/api/v1/images/:image/layers', need: { image: 'image' } },
  // Its desktop: read it, take and give back its lease, commit to it.
  { methods: READ, url: '/api/v1/desktops/:name', need: { desktop: 'name' } },
  { methods: ['POST', 'DELETE'], url: '/api/v1/desktops/:name/lease', need: { desktop: 'name' } },
  { methods: ['POST'], url: '/api/v1/desktops/:name/commits', need: { desktop: 'name' } },
];

declare module 'fastify' {
  interface FastifyContextConfig {
    /** What this route needs, overriding ACCESS_RULES (default: the table, else admin). */
    access?: Need;
  }
}

/** The bearer token → its scope; 401 when missing, unknown or expired. */
export function authenticate(req: FastifyRequest, repo: MetaRepo, now: Date): string {
  const h = req.headers.authorization;
  const token = h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined;
  const found = token ? repo.findToken(hashToken(token)) : undefined;
  if (!found) throw dfError('DF_ERR_UNAUTHORIZED', token ? 'the token is not valid' : 'send the token as "Authorization: Bearer <token>"');
  if (found.expiresAt !== null && found.expiresAt <= now.toISOString()) {
    throw dfError('DF_ERR_TOKEN_EXPIRED', `the token of scope ${found.scope} expired at ${found.expiresAt}; ask an admin for a new one`, { scope: found.scope, expiresAt: found.expiresAt });
  }
  return found.scope;
}

export function needOf(method: string, url: string, configured: Need | undefined): Need {
  if (configured) return configured;
  const rule = ACCESS_RULES.find((r) => r.methods.includes(method) && (typeof r.url === 'string' ? r.url === url : r.url.test(url)));
  return rule?.need ?? 'admin';
}

/** Throws DF_ERR_FORBIDDEN unless `scope` satisfies what the route needs. */
export function authorize(req: FastifyRequest, scope: string, repo: MetaRepo): void {
  if (scope === 'admin' || req.is404) return;
  const url = req.routeOptions.url ?? '';
  const need = needOf(req.method, url, req.routeOptions.config?.access);
  const desktop = scopeDesktop(scope);
  const params = (req.params ?? {}) as Record<string, string | undefined>;
  const ok =
    need === 'any' ||
    (desktop !== undefined && need !== 'admin' && (
      'desktop' in need ? params[need.desktop] === desktop : params[need.image] !== undefined && repo.getDesktop(desktop)?.image === params[need.image]
    ));
  if (!ok) {
    throw dfError('DF_ERR_FORBIDDEN', `a token of scope ${scope} may not ${req.method} ${url}${need === 'admin' ? ' (admin only)' : ''}`, {
      scope, method: req.method, route: url,
    });
  }
}
