import type { FlagSpec, GroupSpec, SubSpec } from './args.js';
import { GLOBAL_OPTIONS } from './spec.js';

/**
 * Help texts, rendered from the declarations the parser reads (cli/spec.ts): the usage line of a
 * subcommand lists exactly the flags it takes, with the placeholders and defaults declared there.
 */

const WIDTH = 100;

/** The pieces of a usage line: `deskfuse image publish`, `NAME`, `--from FILE`, `[--ref REF]`, … */
function usageUnits(g: GroupSpec, sub: string): string[] {
  const s = g.subs[sub]!;
  const units = [`deskfuse ${g.name}${sub ? ` ${sub}` : ''}`];
  if (s.args) units.push(...s.args.split(/\s+(?![^[]*\])/).filter(Boolean));
  for (const f of s.flags ?? []) {
    if (f.startsWith('@')) {
      const set = f.slice(1);
      units.push(`[${set}]`);
      continue;
    }
    const required = f.endsWith('!');
    const name = f.replace(/!$/, '');
    const u = flagSynopsis(name, g.flags[name]!);
    units.push(required ? u : `[${u}]`);
  }
  if (s.passthrough) units.push(`[-- ${s.passthrough}]`);
  return units;
}

function flagSynopsis(name: string, f: FlagSpec): string {
  const flag = f.showShort && f.short ? `-${f.short}` : `--${name}`;
  return f.type === 'string' ? `${flag} ${f.arg ?? 'VALUE'}` : flag;
}

/** Units joined with spaces, wrapped before WIDTH; continuation lines indented under the arguments. */
function wrap(units: string[], indent: number, width = WIDTH): string {
  const lines: string[] = [];
  let line = '';
  for (const u of units) {
    if (line && line.length + 1 + u.length > width) {
      lines.push(line);
      line = ' '.repeat(indent) + u;
    } else {
      line = line ? `${line} ${u}` : u;
    }
  }
  lines.push(line);
  return lines.join('\n');
}

export function usageLine(g: GroupSpec, sub: string, indent = 0): string {
  const units = usageUnits(g, sub);
  // Continuation lines start under the first argument (at most 40 columns in).
  const under = Math.min(units[0]!.length + 1, 40);
  return wrap(units, under, WIDTH - indent).split('\n').map((l) => ' '.repeat(indent) + l).join('\n');
}

/** Text wrapped to WIDTH, every line indented; a line's own leading spaces are kept on its continuations. */
function para(text: string, indent: number): string {
  return text.split('\n').map((raw) => {
    const lead = /^\s*/.exec(raw)![0];
    const out: string[] = [];
    let line = '';
    for (const w of raw.trimStart().split(' ')) {
      if (line && indent + line.length + 1 + w.length > WIDTH) {
        out.push(line);
        line = lead + w;
      } else {
        line = line ? `${line} ${w}` : lead + w;
      }
    }
    out.push(line);
    return out.map((l) => (l ? ' '.repeat(indent) + l : '')).join('\n');
  }).join('\n');
}

function optionRows(g: GroupSpec, s: SubSpec): Array<[string, string]> {
  const rows: Array<[string, string]> = [];
  for (const f of s.flags ?? []) {
    const names = f.startsWith('@') ? g.sets![f.slice(1)]!.flags : [f];
    for (const n of names) {
      const name = n.replace(/!$/, '');
      const spec = g.flags[name]!;
      const left = `${spec.short ? `-${spec.short}, ` : '    '}--${name}${spec.type === 'string' ? ` ${spec.arg ?? 'VALUE'}` : ''}`;
      const dflt = typeof spec.default === 'string' && spec.default !== '' && !/default/.test(s.flagHelp?.[name] ?? spec.help) ? ` (default ${spec.default})` : '';
      rows.push([left, `${s.flagHelp?.[name] ?? spec.help}${dflt}`]);
    }
  }
  return rows;
}

function rowsText(rows: Array<[string, string]>, indent = 2): string {
  const w = Math.min(32, Math.max(...rows.map(([l]) => l.length)));
  return rows.map(([l, r]) => {
    const pad = l.length > w ? `${' '.repeat(indent)}${l}\n${' '.repeat(indent + w + 2)}` : `${' '.repeat(indent)}${l.padEnd(w)}  `;
    return pad + para(r, indent + w + 2).trimStart();
  }).join('\n');
}

function globalsLine(s: SubSpec): string {
  return s.local
    ? 'Global options: --json (one JSON object), -h/--help.'
    : 'Global options: --server URL, --token T, --ca FILE or --ca-fingerprint SHA256 (https), --json (one JSON object), -h/--help (deskfuse --help says more).';
}

/** `deskfuse image publish --help`. */
export function subHelp(g: GroupSpec, sub: string): string {
  const s = g.subs[sub]!;
  const parts = [`Usage: ${usageLine(g, sub).replace(/\n/g, `\n${'       '}`)}`, '', para(s.about, 2)];
  const rows = optionRows(g, s);
  if (rows.length) parts.push('', 'Options:', rowsText(rows));
  for (const f of s.flags ?? []) if (f.startsWith('@')) parts.push('', para(`${f.slice(1)}: ${g.sets![f.slice(1)]!.help}`, 0));
  if (s.notes) parts.push('', para(s.notes, 0));
  parts.push('', globalsLine(s));
  return `${parts.join('\n')}\n`;
}

/** `deskfuse image --help` (or, with a prefix, `deskfuse vdi session --help`): every usage line and its summary. */
export function groupHelp(g: GroupSpec, prefix?: string): string {
  const subs = Object.keys(g.subs).filter((k) => !prefix || k.startsWith(`${prefix} `));
  if (subs.length === 1 && subs[0] === '') return subHelp(g, '');
  const lines = [`deskfuse ${g.name}${prefix ? ` ${prefix}` : ''}: ${g.about}`, '', 'Usage:'];
  for (const k of subs) {
    lines.push(usageLine(g, k, 2));
    lines.push(para(g.subs[k]!.about.split('\n')[0]!, 6));
  }
  const sets = [...new Set(subs.flatMap((k) => (g.subs[k]!.flags ?? []).filter((f) => f.startsWith('@'))))];
  for (const f of sets) {
    const set = g.sets![f.slice(1)]!;
    lines.push('', para(`${f.slice(1)}: ${set.help}`, 0), para(set.flags.map((n) => (n.endsWith('!') ? flagSynopsis(n.slice(0, -1), g.flags[n.slice(0, -1)]!) : `[${flagSynopsis(n, g.flags[n]!)}]`)).join(' '), 2));
  }
  if (g.notes && !prefix) lines.push('', para(g.notes, 0));
  lines.push('', `A command's options: deskfuse ${g.name} ${subs[0]?.split(' ')[0] === prefix ? `${prefix} ` : ''}COMMAND --help.`, globalsLine({ about: '' }));
  return `${lines.join('\n')}\n`;
}

/** `deskfuse --help`: every command's usage line, the global options, the environment, the exit codes. */
export function topHelp(groups: readonly GroupSpec[]): string {
  const lines = ['deskfuse — PXE/iPXE boot-time sync appliance for desktop fusion', '', 'Usage:'];
  for (const g of groups) for (const k of Object.keys(g.subs)) lines.push(usageLine(g, k, 2));
  lines.push('', 'Global options:');
  lines.push(rowsText([
    ...Object.entries(GLOBAL_OPTIONS).map(([n, f]: [string, FlagSpec]) => [`${f.short ? `-${f.short}, ` : '    '}--${n}${f.type === 'string' ? ` ${f.arg}` : ''}`, f.help] as [string, string]),
    ['    --version', 'the version'],
  ]));
  lines.push(
    '',
    para('A command\'s own help: deskfuse COMMAND --help, deskfuse COMMAND SUBCOMMAND --help (or deskfuse help COMMAND).', 0),
    para('On a TTY, long work shows a progress line (bytes, rate, ETA) on stderr.', 0),
    '',
    'Environment:',
    rowsText([
      ['DESKFUSE_SERVER', 'the --server default'],
      ['DESKFUSE_TOKEN', 'the --token default'],
      ['DESKFUSE_DATA', 'the data directory (server --data; where the CLI looks for admin.token)'],
      ['DESKFUSE_DEBUG', 'print the stack of an internal error'],
    ]),
    '',
    para('Exit codes: 0 ok, 1 error (deskfuse: DF_ERR_…: … on stderr), 2 usage, 3 the commit was kept as a conflict version.', 0),
  );
  return `${lines.join('\n')}\n`;
}
