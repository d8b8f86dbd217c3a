import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AppContext } from '../context.js';
import type { Frame } from './html.js';
import type { SessionStore } from './session.js';

/** How often a live stream pings (and checks that its session is still signed in). */
export const LIVE_PING_MS = 15_000;

/** What each section's pages get from the console plugin (server/console/plugin.ts). */
export interface ConsoleKit {
  ctx: AppContext;
  store: SessionStore;
  /** The session cookie's name. */
  cookieName: string;
  /** Render a signed-in page (takes the session's messages). */
  render(req: FastifyRequest, reply: FastifyReply, f: Omit<Frame, 'csrf' | 'flash'> & { status?: number }): FastifyReply;
  /**
   * Run an action, keep its outcome as a message for the next page, redirect (303) to `back`
   * (a function: chosen after the action, from whether it succeeded).
   */
  act(req: FastifyRequest, reply: FastifyReply, back: string | ((ok: boolean) => string), run: () => Promise<string>): Promise<FastifyReply>;
  csrf(req: FastifyRequest): string;
  form(req: FastifyRequest): Record<string, string>;
}
