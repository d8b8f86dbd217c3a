import pino, { type Logger as PinoLogger } from 'pino';
import type { ServerConfig } from '../src/config/server.js';

/**
 * The server's logger: pino, JSON lines (journald, log shippers) or one readable line per entry on
 * a terminal. Secrets never reach a line: the Authorization and Cookie headers and any `token`,
 * `secret` or `password` field are redacted, and request URLs are logged with secret query values
 * masked (safeUrl).
 */
export function createLogger(config: Pick<ServerConfig, 'logLevel' | 'logFormat'>, out: NodeJS.WritableStream & { isTTY?: boolean }): PinoLogger {
  const pretty = config.logFormat === 'pretty' || (config.logFormat === 'auto' && out.isTTY === true);
  const options = {
    level: config.logLevel,
    base: { svc: 'deskfuse' },
    redact: { paths: REDACT, censor: '[redacted]' },
  };
  return pino(options, pretty ? { write: (line: string) => out.write(prettyLine(line)) } : out);
}

const REDACT = [
  'req.headers.authorization', 'req.headers.cookie', 'res.headers["set-cookie"]', 'headers.authorization', 'headers.cookie',
  'token', 'secret', 'password', '*.token', '*.secret', '*.password',
];

/** Query parameters whose values are never logged. */
const SECRET_PARAM = /token|secret|password|passwd|key|sig|auth|cookie|session/i;

/** A request URL for the log: the values of secret-looking query parameters masked. */
export function safeUrl(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const params = url.slice(q + 1).split('&').map((p) => {
    const eq = p.indexOf('=');
    const name = eq < 0 ? p : p.slice(0, eq);
    return eq >= 0 && SECRET_PARAM.test(decodeURIComponentSafe(name)) ? `${name}=[redacted]` : p;
  });
  return `${url.slice(0, q)}?${params.join('&')}`;
}

function decodeURIComponentSafe(s: string): string {
  try { return decodeURIComponent(s); } catch { return s; }
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const OMIT = new Set(['level', 'time', 'msg', 'svc', 'pid', 'hostname', 'err']);

/** One pino JSON line → `12:00:01.234 INFO  msg key=value …` (an error's stack on the lines below). */
export function prettyLine(json: string): string {
  let o: Record<string, unknown>;
  try { o = JSON.parse(json) as Record<string, unknown>; } catch { return json; }
  const t = typeof o.time === 'number' ? new Date(o.time).toISOString().slice(11, 23) : '';
  const level = (LEVEL_NAMES[o.level as number] ?? String(o.level)).padEnd(5);
  const svc = o.svc && o.svc !== 'deskfuse' ? `[${String(o.svc)}] ` : '';
  const fields = Object.entries(o).filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/[\s"=]/.test(v) && v !== '' ? v : JSON.stringify(v)}`);
  const err = o.err as { type?: string; message?: string; stack?: string; code?: string } | undefined;
  const errText = err ? ` err=${JSON.stringify(`${err.code ? `${err.code}: ` : ''}${err.message ?? ''}`)}` : '';
  const stack = err?.stack && (o.level as number) >= 50 ? `\n    ${err.stack.split('\n').slice(1).map((l) => l.trim()).join('\n    ')}` : '';
  return `${t} ${level} ${svc}${String(o.msg ?? '')}${fields.length ? ` ${fields.join(' ')}` : ''}${errText}${stack}\n`;
}
