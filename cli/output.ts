import { DeskfuseError } from '../src/errors.js';
import { arity, contextOf, flagNames, type Io } from './args.js';

/** One JSON object with --json, else the human text. */
export function emit(io: Io, json: boolean, obj: unknown, text: () => string): void {
  io.out.write(json ? `${JSON.stringify(obj)}\n` : text());
}

/**
 * Rows as aligned columns (the first row is the header). `maxWidth` caps a column: longer cells
 * are cut with "…" (--json keeps the full value).
 */
export function table(rows: string[][], opts: { maxWidth?: Record<number, number> } = {}): string {
  if (!rows.length) return '';
  const cut = rows.map((r) => r.map((x, c) => {
    const max = opts.maxWidth?.[c];
    return max !== undefined && x.length > max ? `${x.slice(0, max - 1)}…` : x;
  }));
  const w = cut[0]!.map((_, c) => Math.max(...cut.map((r) => (r[c] ?? '').length)));
  return cut.map((r) => r.map((x, c) => (c === r.length - 1 ? x : x.padEnd(w[c]!))).join('  ').trimEnd()).join('\n') + '\n';
}

/** "1 version", "2 versions" (`many` for irregular plurals). */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

const pad2 = (n: number) => String(n).padStart(2, '0');

/**
 * An ISO time as people read it, in the local time zone (TZ): `2026-12-07 15:04`, with seconds
 * when asked; `-` for none.
 */
export function fmtTime(iso: string | null | undefined, o: { seconds?: boolean } = {}): string {
  if (!iso) return '-';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const s = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return o.seconds ? `${s}:${pad2(d.getSeconds())}` : s;
}

/** "3 min ago", "in 2 h", "5 days ago": for times near now (leases, last seen). */
export function fmtAgo(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const s = Math.round((t - now) / 1000);
  const a = Math.abs(s);
  const text = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 * 2 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} days`;
  return s <= 0 ? `${text} ago` : `in ${text}`;
}

/**
 * The refs at one version or of one image, short enough for a table cell: plain refs by name
 * (main first), then how many desktops' lines and conflicts. --json has every ref.
 */
export function refsCell(refs: ReadonlyArray<{ name: string; version?: number }>, o: { versions?: boolean; width?: number } = {}): string {
  const width = o.width ?? 40;
  const plain = refs.filter((r) => !r.name.startsWith('desktops/') && !r.name.startsWith('conflicts/'))
    .sort((a, b) => (a.name === 'main' ? -1 : b.name === 'main' ? 1 : a.name.localeCompare(b.name)));
  const desktops = refs.filter((r) => r.name.startsWith('desktops/'));
  const conflicts = refs.filter((r) => r.name.startsWith('conflicts/'));
  const one = (r: { name: string; version?: number }) => (o.versions && r.version !== undefined ? `${r.name}=${r.version}` : r.name);
  // A lone desktop line or conflict is named (cut to the width); several are counted.
  const named = (x: { name: string; version?: number }) => { const t = one(x); return t.length > width ? `${t.slice(0, width - 1)}…` : t; };
  const tail = [
    ...(desktops.length === 1 && plain.length < 2 ? [named(desktops[0]!)] : desktops.length ? [`+${plural(desktops.length, 'desktop')}`] : []),
    ...(conflicts.length === 1 && plain.length + desktops.length === 0 ? [named(conflicts[0]!)] : conflicts.length ? [`+${plural(conflicts.length, 'conflict')}`] : []),
  ];
  const shown: string[] = [];
  let len = tail.join(' ').length;
  for (let i = 0; i < plain.length; i++) {
    const x = one(plain[i]!);
    const rest = plain.length - i - 1;
    const more = rest ? ` +${rest} more` : '';
    if (shown.length && len + x.length + 1 + more.length > width) {
      shown.push(`+${plain.length - i} more`);
      break;
    }
    shown.push(x);
    len += x.length + 1;
  }
  const out = [...shown, ...tail].join(' ');
  return out || '-';
}

/**
 * An error as a CLI user can act on it: a refused token names where the CLI found it and how to give
 * another (never the HTTP header); the server's validation of a request field names the argument
 * it came from and what that argument must be; an unreachable default server says how to name one.
 */
export function explainError(e: DeskfuseError, env: Io['env']): DeskfuseError {
  const c = contextOf(env);
  const tok = c.token;
  const src = tok?.from === 'flag' ? '--token' : tok?.from === 'env' ? 'DESKFUSE_TOKEN' : tok?.from === 'file' ? tok.file! : undefined;
  const tokenFields = tok ? { tokenFrom: tok.from === 'flag' ? '--token' : tok.from === 'env' ? 'DESKFUSE_TOKEN' : tok.from === 'file' ? tok.file : 'none' } : {};
  const server = (e.fields.server as string | undefined) ?? c.server?.value.split(',')[0];
  const again = (msg: string, extra: Record<string, unknown> = {}) => new DeskfuseError(e.code, msg, { ...e.fields, ...extra }, { cause: e });
  switch (e.code) {
    case 'DF_ERR_UNAUTHORIZED':
      if (!tok) return e;
      if (tok.from === 'none') {
        return again(`no token: pass --token T or set DESKFUSE_TOKEN (an admin token is the admin.token file in the server's data directory${tok.looked ? `; none is readable at ${tok.looked}` : ''})`, tokenFields);
      }
      return again(`${server ?? 'the server'} refused the token from ${src}: ${/not valid/.test(e.message) ? 'it is not valid there (mistyped, revoked, or of another install)' : e.message}; `
        + `pass a valid one with --token T or set DESKFUSE_TOKEN`, tokenFields);
    case 'DF_ERR_TOKEN_EXPIRED':
    case 'DF_ERR_FORBIDDEN':
      return src ? again(`${e.message} (the token from ${src})`, tokenFields) : e;
    case 'DF_ERR_UNREACHABLE':
      if (c.server?.from === 'default') return again(`${e.message}; no server was named, so the CLI tried the default: give --server http://HOST:PORT or set DESKFUSE_SERVER`);
      return c.server ? again(`${e.message} (server from ${c.server.from})`) : e;
    case 'DF_ERR_BAD_REQUEST': {
      const field = typeof e.fields.field === 'string' ? e.fields.field : undefined;
      const cmd = c.command;
      const m = field ? /^(params|querystring|body)\.(.+)$/.exec(field) : null;
      if (!cmd || !m || !e.message.startsWith(`${field}: `)) return e;
      const arg = argumentOf(field!, m[1]!, m[2]!, cmd);
      if (!arg) return e;
      const rule = e.message.slice(field!.length + 2);
      const what = cmd.sub.argHelp?.[arg.name] ?? ruleWords(rule);
      const got = arg.value !== undefined ? `, got ${JSON.stringify(arg.value)}` : '';
      return again(`${arg.name}: expected ${what}${got} (deskfuse ${cmd.where} --help)`, { argument: arg.name });
    }
    case 'DF_ERR_USAGE':
      return c.command && !/--help/.test(e.message) ? again(`${e.message} (deskfuse ${c.command.where} --help)`) : e;
    default:
      return e;
  }
}

type Command = NonNullable<ReturnType<typeof contextOf>['command']>;

/** The CLI argument a server field came from, and the value given for it. */
function argumentOf(field: string, where: string, key: string, cmd: Command): { name: string; value: unknown } | undefined {
  const words = (cmd.sub.args ?? '').split(/\s+(?![^[]*\])/).filter(Boolean);
  const bare = words.map((w) => w.replace(/^\[|\]$/g, '').replace(/\[.*$/, ''));
  const flags = flagNames(cmd.group, cmd.sub);
  const valueOf = (name: string) => {
    if (name.startsWith('--')) return cmd.values[name.slice(2)];
    const i = bare.indexOf(name.replace(/\[.*$/, ''));
    const v = i >= 0 ? cmd.positionals[i] : undefined;
    // NAME[@REF]: the part the server checked.
    if (v !== undefined && /\[@/.test(name) && where === 'querystring') return v.includes('@') ? v.slice(v.indexOf('@') + 1) : v;
    return v;
  };
  const named = cmd.sub.fields?.[field] ?? cmd.group.fields?.[field];
  if (named && (named.startsWith('--') ? flags.includes(named.slice(2)) || named === '--message' : bare.includes(named.replace(/\[.*$/, '')) || words.includes(named))) {
    return { name: named, value: valueOf(named) };
  }
  if (where === 'params') {
    const i = bare.indexOf(key.toUpperCase());
    if (i >= 0) return { name: bare[i]!, value: cmd.positionals[i] };
    // One argument, one path parameter: it is that one.
    if (arity(cmd.sub.args).max === 1 && bare.length === 1) return { name: bare[0]!, value: cmd.positionals[0] };
    return undefined;
  }
  const flag = key.replace(/[A-Z]/g, (x) => `-${x.toLowerCase()}`);
  if (flags.includes(flag)) return { name: `--${flag}`, value: cmd.values[flag] };
  return undefined;
}

const PATTERNS: Record<string, string> = {
  '^[a-z0-9][a-z0-9._-]{0,63}$': 'a name of 1-64 characters a-z 0-9 . _ -, starting with a letter or digit',
  '^[A-Za-z0-9][A-Za-z0-9._/-]*$': 'a ref name: letters, digits and . _ - /, starting with a letter or digit',
  '^/[^\\0]{1,255}$': 'an absolute path (/…)',
};

/** An ajv rule ("must match pattern …", "must be <= 10000") in plain words. */
function ruleWords(rule: string): string {
  let m: RegExpExecArray | null;
  if ((m = /^must match pattern "(.*)"$/.exec(rule))) {
    const hex = /^\^\[0-9a-f\]\{(\d+)\}\$$/.exec(m[1]!);
    return PATTERNS[m[1]!] ?? (hex ? `${hex[1]} hex digits (0-9, a-f)` : `text of the form ${m[1]}`);
  }
  if ((m = /^must NOT have more than (\d+) characters$/.exec(rule))) return `at most ${m[1]} characters`;
  if ((m = /^must NOT have fewer than (\d+) characters$/.exec(rule))) return `at least ${m[1]} characters`;
  if (rule === 'must be integer') return 'a whole number';
  if (rule === 'must be number') return 'a number';
  if (rule === 'must be boolean') return 'true or false';
  if ((m = /^must be (>=|<=|>|<) (-?[\d.]+)$/.exec(rule))) return `a number ${{ '>=': 'of at least', '<=': 'of at most', '>': 'above', '<': 'below' }[m[1]!]} ${m[2]}`;
  if (rule === 'must be equal to one of the allowed values') return 'one of the values its help lists';
  return rule.replace(/^must /, '');
}
