import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ApiClient, busyLine } from '../src/api/client.js';
import { DeskfuseError, dfError } from '../src/errors.js';
import { groupHelp, subHelp } from './help.js';
import { GLOBAL_OPTIONS } from './spec.js';
import type { TlsTrust } from '../src/api/tls-pin.js';
import { normalizeFingerprint } from '../src/tls/fingerprint.js';

/**
 * What a command takes, declared once (cli/spec.ts): the parser reads these declarations and the
 * help is rendered from them (cli/help.ts), so a flag the help shows is a flag the parser takes.
 */
export interface FlagSpec {
  type: 'string' | 'boolean';
  short?: string;
  default?: string | boolean;
  /** The value's placeholder in the help (FILE, N, URL, …); string flags only. */
  arg?: string;
  /** One line for the help's option list (a command may say it its own way: SubSpec.flagHelp). */
  help: string;
  /** The usage line shows the short form (`-m MSG`). */
  showShort?: boolean;
}
export type Flags = Record<string, FlagSpec>;

export interface SubSpec {
  /** Positional arguments as the usage line shows them: `NAME`, `IMAGE [REF]`, `NAME[@REF|@VERSION]`. */
  args?: string;
  /** The flags it takes (names in its group's flags); `name!` marks one it needs, `@SET` a flag set. */
  flags?: readonly string[];
  /** What it does: the first line is its summary in the group's help. */
  about: string;
  /** More text after the option list. */
  notes?: string;
  /** This command's wording for a flag, where the group's line does not fit it. */
  flagHelp?: Record<string, string>;
  /** What a positional argument must be, said in words (for the server's validation errors). */
  argHelp?: Record<string, string>;
  /** Reads or writes local files only: no --server/--token. */
  local?: boolean;
  /** Everything after `--` is handed on (`vdi start … -- QEMU ARGS`). */
  passthrough?: string;
  /** The server's name of a field → the argument it came from (`params.image` → `NAME`). */
  fields?: Record<string, string>;
}

export interface FlagSet {
  flags: readonly string[];
  help: string;
}

export interface GroupSpec<F extends Flags = Flags> {
  name: string;
  about: string;
  flags: F;
  /** Subcommands; `''` for a command without any (`deskfuse server`); `a b` for nested ones (`vdi session create`). */
  subs: Record<string, SubSpec>;
  sets?: Record<string, FlagSet>;
  /** The server's field names → arguments, for every subcommand (SubSpec.fields wins). */
  fields?: Record<string, string>;
  notes?: string;
}

/** Global options every command takes (declared in cli/spec.ts). */
export { GLOBAL_OPTIONS };

export interface Io {
  out: NodeJS.WriteStream;
  err: NodeJS.WriteStream;
  env: Record<string, string | undefined>;
}

/** A usage error that prints a help text after its message (not part of its JSON). */
export class UsageError extends DeskfuseError {
  constructor(message: string, readonly help?: string, fields: Record<string, unknown> = {}) {
    super('DF_ERR_USAGE', message, fields);
  }
}

/** Flags parsed with the global options, for a command line not declared in cli/spec.ts (parseCommand is for those that are). */
export function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...GLOBAL_OPTIONS, ...options }, allowPositionals: true, strict: true, tokens: true });
  } catch (cause) {
    throw dfError('DF_ERR_USAGE', parseErrorText(cause as Error & { code?: string }), {}, cause);
  }
}

/** node:util's parse errors in this CLI's words. */
function parseErrorText(e: Error & { code?: string }, where?: string, flags?: Flags): string {
  const m = /'(-{1,2}[^' ]+)/.exec(e.message);
  const opt = m?.[1];
  const help = where ? ` (deskfuse ${where} --help)` : '';
  if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && opt) return `${where ? `${where}: ` : ''}unknown option ${opt}${help}`;
  if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && opt) {
    const f = flags?.[opt.replace(/^-+/, '')];
    if (/argument missing|ambiguous/.test(e.message)) return `${opt} needs a value${f?.arg ? ` (${f.arg})` : ''}${/ambiguous/.test(e.message) ? `; to give one starting with "-", write ${opt}=VALUE` : ''}`;
    if (/does not take an argument/.test(e.message)) return `${opt} takes no value${help}`;
  }
  return e.message;
}

/** What this run was given and where it came from: the error texts name them (cli/output.ts explainError). */
interface RunContext {
  server?: { value: string; from: string };
  token?: { from: 'flag' | 'env' | 'file' | 'none'; file?: string; looked?: string };
  command?: { where: string; sub: SubSpec; group: GroupSpec; positionals: string[]; values: Record<string, unknown> };
}
const CONTEXT = new WeakMap<object, RunContext>();
const ctx = (env: Io['env']): RunContext => {
  let c = CONTEXT.get(env);
  if (!c) CONTEXT.set(env, (c = {}));
  return c;
};
export const contextOf = (env: Io['env']): Readonly<RunContext> => CONTEXT.get(env) ?? {};

export interface Parsed<V> {
  /** The subcommand (`create`, `session create`; `''` for a group without any). */
  sub: string;
  values: V;
  /** The positional arguments after the subcommand's words. */
  positionals: string[];
  /** What followed `--` (SubSpec.passthrough). */
  extra: string[];
}

const HELP_WORDS = new Set(['--help', '-h', 'help']);

/**
 * Parse a command line against its group's declarations. Help (`GROUP --help`, `GROUP help [SUB]`,
 * `GROUP SUB --help`) is printed here: the answer is then the exit code. A flag the subcommand does
 * not take, a misspelt subcommand or too many arguments are usage errors naming the help to read.
 */
export function parseCommand<F extends Flags>(g: GroupSpec<F>, args: string[], io: Io) {
  const single = '' in g.subs;
  let sub = '';
  let rest = args;
  if (!single) {
    const [first, second] = args;
    if (first === undefined) throw new UsageError(`missing ${g.name} command`, groupHelp(g));
    if (HELP_WORDS.has(first)) {
      if (first === 'help' && second !== undefined && !second.startsWith('-')) return helpOf(g, [second, ...args.slice(2)], io);
      io.out.write(groupHelp(g));
      return 0;
    }
    if (g.subs[first]) {
      sub = first;
      rest = args.slice(1);
    } else if (Object.keys(g.subs).some((k) => k.startsWith(`${first} `))) {
      const key = `${first} ${second ?? ''}`;
      if (second !== undefined && g.subs[key]) {
        sub = key;
        rest = args.slice(2);
      } else if (second === undefined || HELP_WORDS.has(second)) {
        if (second === undefined) throw new UsageError(`missing ${g.name} ${first} command`, groupHelp(g, first));
        io.out.write(groupHelp(g, first));
        return 0;
      } else {
        throw new UsageError(`unknown ${g.name} ${first} command ${JSON.stringify(second)}${didYouMean(second, Object.keys(g.subs).filter((k) => k.startsWith(`${first} `)).map((k) => k.slice(first.length + 1)))}`, groupHelp(g, first));
      }
    } else if (first.startsWith('-')) {
      throw new UsageError(`missing ${g.name} command before ${first}`, groupHelp(g));
    } else {
      throw new UsageError(`unknown ${g.name} command ${JSON.stringify(first)}${didYouMean(first, Object.keys(g.subs).map((k) => k.split(' ')[0]!))}`, groupHelp(g));
    }
  }
  const spec = g.subs[sub]!;
  const where = `${g.name}${sub ? ` ${sub}` : ''}`;
  let extra: string[] = [];
  if (spec.passthrough) {
    const dd = rest.indexOf('--');
    if (dd >= 0) {
      extra = rest.slice(dd + 1);
      rest = rest.slice(0, dd);
    }
  }
  let r;
  try {
    r = parseArgs({ args: rest, options: { ...GLOBAL_OPTIONS, ...g.flags }, allowPositionals: true, strict: true, tokens: true });
  } catch (cause) {
    throw new UsageError(parseErrorText(cause as Error & { code?: string }, where, { ...GLOBAL_OPTIONS, ...g.flags }), undefined, {});
  }
  if ((r.values as { help?: boolean }).help) {
    io.out.write(subHelp(g, sub));
    return 0;
  }
  const takes = new Set([...Object.keys(GLOBAL_OPTIONS), ...flagNames(g, spec)]);
  for (const t of r.tokens ?? []) {
    if (t.kind === 'option' && !takes.has(t.name)) {
      throw new UsageError(`${where} does not take ${t.rawName} (deskfuse ${where} --help)`, undefined, { option: `--${t.name}` });
    }
  }
  // Too few arguments: each command says which one is missing, in its words (need()).
  const { max } = arity(spec.args);
  const positionals = r.positionals;
  if (positionals.length > max) {
    const extraArg = positionals[max]!;
    throw new UsageError(max === 0
      ? `${where} takes no argument, got ${JSON.stringify(extraArg)} (deskfuse ${where} --help)`
      : `${where} takes ${spec.args}, got one more: ${JSON.stringify(extraArg)} (deskfuse ${where} --help)`);
  }
  ctx(io.env).command = { where, sub: spec, group: g as GroupSpec, positionals, values: r.values as Record<string, unknown> };
  return { sub, values: r.values, positionals, extra } satisfies Parsed<typeof r.values>;
}

/** `GROUP help SUB…`: that subcommand's help (or the group's, for a word it does not know). */
function helpOf(g: GroupSpec, words: string[], io: Io): number {
  const two = words.slice(0, 2).join(' ');
  if (g.subs[two]) io.out.write(subHelp(g, two));
  else if (g.subs[words[0]!]) io.out.write(subHelp(g, words[0]!));
  else if (Object.keys(g.subs).some((k) => k.startsWith(`${words[0]} `))) io.out.write(groupHelp(g, words[0]));
  else throw new UsageError(`unknown ${g.name} command ${JSON.stringify(words[0])}${didYouMean(words[0]!, Object.keys(g.subs).map((k) => k.split(' ')[0]!))}`, groupHelp(g));
  return 0;
}

/** The flags a subcommand takes, flag sets expanded, `!` dropped. */
export function flagNames(g: GroupSpec, s: SubSpec): string[] {
  return (s.flags ?? []).flatMap((f) => (f.startsWith('@') ? g.sets?.[f.slice(1)]?.flags ?? [] : [f])).map((f) => f.replace(/!$/, ''));
}

/** How many positional arguments `IMAGE [REF]` allows (`…` or `ARGS...`: any number). */
export function arity(args: string | undefined): { min: number; max: number } {
  if (!args) return { min: 0, max: 0 };
  const words = args.split(/\s+(?![^[]*\])/).filter(Boolean);
  const min = words.filter((w) => !w.startsWith('[')).length;
  return { min, max: words.some((w) => /\.\.\.|…/.test(w)) ? Infinity : words.length };
}

/** " (did you mean X?)" for a word one or two edits (or a prefix) away from one of `known`. */
export function didYouMean(word: string, known: string[]): string {
  const near = [...new Set(known)].map((k) => ({ k, d: editDistance(word, k) })).filter(({ k, d }) => d <= (word.length > 4 ? 2 : 1) || (word.length >= 3 && k.startsWith(word)))
    .sort((a, b) => a.d - b.d);
  return near.length ? ` (did you mean ${near[0]!.k}?)` : '';
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length]![b.length]!;
}

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';

/**
 * --server, else DESKFUSE_SERVER, else the default. `HOST:PORT` (or `HOST`) means `http://HOST:PORT`;
 * anything else that is not an http(s) URL is a usage error naming where it came from.
 */
export function serverFrom(values: { server?: string | undefined }, env: Io['env']): string {
  const from = values.server !== undefined ? '--server' : env.DESKFUSE_SERVER ? 'DESKFUSE_SERVER' : 'default';
  const raw = values.server ?? (env.DESKFUSE_SERVER || DEFAULT_SERVER);
  const parts = raw.split(',').map((s) => s.trim()).filter(Boolean);
  const fixed = parts.map((s) => (/^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? s : /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?(\/.*)?$/i.test(s) ? `http://${s}` : s));
  const bad = fixed.filter((s) => !/^https?:\/\/(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:\d{1,5})?(\/[^\s,]*)?$/i.test(s));
  if (bad.length || !fixed.length) {
    throw dfError('DF_ERR_USAGE', `${from}: expected http://HOST:PORT (several: http://A:PORT,http://B:PORT), got ${JSON.stringify(bad[0] ?? raw)}`, { option: from });
  }
  const value = fixed.join(',');
  ctx(env).server = { value, from };
  return value;
}

/** --token, else DESKFUSE_TOKEN, else the admin.token of the local data dir (remembered for the error texts). */
export function tokenFrom(values: { token?: string | undefined }, env: Io['env'], opts: { file?: boolean } = {}): string | undefined {
  const c = ctx(env);
  if (values.token !== undefined && values.token !== '') {
    c.token = { from: 'flag' };
    return values.token;
  }
  if (env.DESKFUSE_TOKEN) {
    c.token = { from: 'env' };
    return env.DESKFUSE_TOKEN;
  }
  const file = path.resolve(env.DESKFUSE_DATA ?? 'data', 'admin.token');
  if (opts.file !== false) {
    try {
      const t = readFileSync(file, 'utf8').trim();
      if (t) {
        c.token = { from: 'file', file };
        return t;
      }
    } catch {
      /* below */
    }
  }
  c.token = { from: 'none', ...(opts.file !== false ? { looked: file } : {}) };
  return undefined;
}

/** The API client of --server/DESKFUSE_SERVER and --token/DESKFUSE_TOKEN (else the local admin.token). */
export function clientFrom(values: { server?: string | undefined; token?: string | undefined; ca?: string | undefined; 'ca-fingerprint'?: string | undefined }, env: Io['env']): ApiClient {
  const server = serverFrom(values, env);
  const token = tokenFrom(values, env);
  const tls = trustFrom(values, env);
  return new ApiClient({ server, ...(token ? { token } : {}), tls, onBusy: (b) => process.stderr.write(busyLine('deskfuse', b)) });
}

/**
 * The CA an https server must chain to: --ca FILE / --ca-fingerprint, else DESKFUSE_CA /
 * DESKFUSE_CA_FINGERPRINT, else the local data dir's private CA (tls/ca.crt, as admin.token is
 * found), else none (the system's CAs). Both of one level is a usage error; a bad pin or an unreadable
 * file too, before anything is sent.
 */
export function trustFrom(values: { ca?: string | undefined; 'ca-fingerprint'?: string | undefined }, env: Io['env']): TlsTrust {
  const levels: [string, string | undefined, string, string | undefined][] = [
    ['--ca', values.ca, '--ca-fingerprint', values['ca-fingerprint']],
    ['DESKFUSE_CA', env.DESKFUSE_CA, 'DESKFUSE_CA_FINGERPRINT', env.DESKFUSE_CA_FINGERPRINT],
  ];
  for (const [caName, ca, fpName, fp] of levels) {
    if (ca && fp) throw dfError('DF_ERR_USAGE', `give ${caName} or ${fpName}, not both`, { option: caName });
    if (fp) {
      try {
        return { caFingerprint: normalizeFingerprint(fp) };
      } catch (err) {
        throw dfError('DF_ERR_USAGE', `${fpName}: ${(err as Error).message}`, { option: fpName }, err);
      }
    }
    if (ca) return { ca: readCa(ca, caName) };
  }
  const local = path.resolve(env.DESKFUSE_DATA ?? 'data', 'tls', 'ca.crt');
  try {
    return { ca: readFileSync(local, 'utf8') };
  } catch {
    return {};
  }
}

function readCa(file: string, option: string): string {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw dfError('DF_ERR_USAGE', `${option}: cannot read ${file}: ${(err as Error).message}`, { option, file }, err);
  }
  if (!/-----BEGIN CERTIFICATE-----/.test(pem)) throw dfError('DF_ERR_USAGE', `${option}: ${file} holds no PEM certificate`, { option, file });
  return pem;
}

/** "64K", "1M", "65536" → bytes. */
export function parseSize(s: string, option: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(s.trim());
  if (!m) throw dfError('DF_ERR_USAGE', `${option}: expected a size like 65536, 64K or 1M, got ${JSON.stringify(s)}`, { option });
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[(m[2] ?? '').charAt(0).toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}

/** `--expect` of a compare-and-swap: a version number, or "none" (no version yet). */
export function parseExpect(s: string, option = '--expect'): number | null {
  if (s === 'none') return null;
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < 1) throw dfError('DF_ERR_USAGE', `${option}: expected a version number or none, got ${JSON.stringify(s)}`, { option });
  return n;
}

export function need<T>(v: T | undefined, what: string): T {
  if (v === undefined || v === '') throw dfError('DF_ERR_USAGE', `missing ${what}`);
  return v;
}
