import { copyFileSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeLayer } from '../../src/image/layer.js';
import { baseDisk, patch, prng } from '../helpers/disk.js';
import { cli, ROOT, startInProcess, tempDir, type CliResult } from '../helpers/server.js';

/**
 * Issue 14, "The CLI, as a new user found it", points 5, 6 and 7: each checked by running the built
 * CLI (dist/cli/main.js), against a real server on loopback where one is needed.
 */

/** Run CLI invocations a few at a time (each is a node process). */
async function all<T>(items: T[], f: (x: T) => Promise<void>, width = 4): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: width }, async () => {
    for (let x = queue.shift(); x !== undefined; x = queue.shift()) await f(x);
  }));
}

/** Every `deskfuse GROUP [SUB …]` the top-level help lists, as argument lists. */
function commandsOf(top: string): string[][] {
  const out: string[][] = [];
  for (const line of top.split('\n')) {
    const m = /^ {2}deskfuse ((?:[a-z]+ ?)+)/.exec(line);
    if (m) out.push(m[1]!.trim().split(' '));
  }
  return out;
}

/** The flags a subcommand's help lists under "Options:" (name, and whether it takes a value). */
function optionsOf(help: string): Array<{ flag: string; value: boolean }> {
  const section = help.split('\nOptions:\n')[1]?.split('\n\n')[0] ?? '';
  return [...section.matchAll(/^ {2}(?:-\w, | {4})(--[a-z0-9-]+)( \S+)?/gm)].map((m) => ({ flag: m[1]!, value: m[2] !== undefined }));
}

describe('5. help: every command group and subcommand prints its help and exits 0', () => {
  let top: CliResult;
  beforeAll(async () => {
    top = await cli(['--help']);
  });

  it('the groups the issue names, and every group, answer --help, -h and help with their usage on stdout', async () => {
    expect(top.code).toBe(0);
    const groups = [...new Set(commandsOf(top.stdout).map((c) => c[0]!))];
    expect(groups).toEqual(expect.arrayContaining(['server', 'image', 'ref', 'desktop', 'agent', 'endpoint', 'vdi', 'token', 'store', 'admin']));
    const runs = groups.flatMap((g) => (g === 'server' ? [[g, '--help'], [g, '-h']] : [[g, '--help'], [g, '-h'], [g, 'help']]));
    await all(runs, async (args) => {
      const r = await cli(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.stdout, args.join(' ')).toContain(`deskfuse ${args[0]}`);
    });
    // The four the issue found printing errors:
    for (const g of ['vdi', 'endpoint', 'ref', 'agent']) {
      const r = await cli([g, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).not.toContain('DF_ERR');
    }
  }, 120_000);

  it('every subcommand answers SUB --help with its usage line, and takes every flag its help lists', async () => {
    const commands = commandsOf(top.stdout).filter((c) => c.length > 1);
    expect(commands.length).toBeGreaterThan(40);
    await all(commands, async (words) => {
      const h = await cli([...words, '--help']);
      const what = words.join(' ');
      expect(h.code, `${what} --help: ${h.stderr}`).toBe(0);
      expect(h.stdout, what).toMatch(new RegExp(`^Usage: deskfuse ${what}( |\\n|$)`));
      // The usage line's flags are all explained under Options, and the parser takes each of them
      // (an unknown one would be a usage error even with --help).
      const opts = optionsOf(h.stdout);
      const usage = h.stdout.split('\n\n')[0]!;
      for (const f of usage.match(/--[a-z0-9-]+/g) ?? []) expect(opts.map((o) => o.flag), `${what}: ${f}`).toContain(f);
      const given = opts.flatMap((o) => (o.value ? [o.flag, 'x'] : [o.flag]));
      const withAll = await cli([...words, ...given, '--help']);
      expect(withAll.code, `${what} ${given.join(' ')} --help: ${withAll.stderr}`).toBe(0);
      // `help SUB` says the same.
      const via = await cli(['help', ...words]);
      expect(via.stdout, `help ${what}`).toBe(h.stdout);
    }, 6);
  }, 240_000);

  it('a nested group (vdi session, desktop lease) has help of its own; a flag a subcommand does not take is refused by name', async () => {
    for (const args of [['vdi', 'session', '--help'], ['vdi', 'session', 'help'], ['desktop', 'lease', '--help']]) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout).toContain(`deskfuse ${args[0]} ${args[1]} `);
    }
    const wrong = await cli(['image', 'list', '--from', 'x']);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('DF_ERR_USAGE: image list does not take --from (deskfuse image list --help)');
    const typo = await cli(['vdi', 'sesion', 'list']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain('unknown vdi command "sesion" (did you mean session?)');
    expect(typo.stderr).toContain('deskfuse vdi session list');
  });

  it('image boot --help lists the --boot-* flags it takes, and the top-level help lists the same', async () => {
    const h = await cli(['image', 'boot', '--help']);
    expect(optionsOf(h.stdout).map((o) => o.flag)).toEqual(['--boot-partition', '--boot-kernel', '--boot-initrd', '--boot-cmdline']);
    const line = top.stdout.split('\n').findIndex((l) => l.startsWith('  deskfuse image boot '));
    const bootUsage = top.stdout.split('\n').slice(line, line + 2).join(' ');
    expect(bootUsage).toContain('--boot-partition N --boot-kernel PATH [--boot-initrd PATH]');
    expect(top.stdout).not.toMatch(/ --(partition|kernel|initrd|cmdline) /);
  });

  it('the top-level help lists every option and command the README\'s CLI reference lists', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const start = readme.indexOf('## CLI reference');
    const ref = readme.slice(start, readme.indexOf('\n## ', start)); // up to the next section (## Web console)
    const flags = new Set([...ref.matchAll(/`[^`]*`/g)].flatMap((m) => m[0].match(/(?<![\w-])--[a-z][a-z0-9-]*/g) ?? []));
    expect(flags.size).toBeGreaterThan(40);
    const helpFlags = new Set(top.stdout.match(/(?<![\w-])--[a-z][a-z0-9-]*/g));
    expect([...flags].filter((f) => !helpFlags.has(f))).toEqual([]);
    const rows = ref.split('\n').filter((l) => l.startsWith('| `deskfuse ')).join('\n');
    const commands = [...rows.matchAll(/`deskfuse ([a-z]+(?: [a-z]+)?)/g)].map((m) => m[1]!);
    expect(commands.length).toBeGreaterThan(30);
    for (const c of commands) expect(top.stdout, c).toContain(`deskfuse ${c}`);
  });
});

describe('6. errors a CLI user can act on', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  beforeAll(async () => {
    tmp = tempDir('df-cliux6-');
    srv = await startInProcess(path.join(tmp.dir, 'data'));
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  it('a 401 says to pass --token or set DESKFUSE_TOKEN and where the token it sent came from, never the HTTP header', async () => {
    const none = await cli(['image', 'list', '--json'], { DESKFUSE_SERVER: srv.url });
    expect(none.code).toBe(1);
    expect(none.json.error).toMatchObject({ code: 'DF_ERR_UNAUTHORIZED', tokenFrom: 'none' });
    expect(none.stderr).toContain('no token: pass --token T or set DESKFUSE_TOKEN');
    expect(none.stderr).toContain('/nonexistent/admin.token');

    const flag = await cli(['image', 'list', '--token', 'dfa_wrong'], { DESKFUSE_SERVER: srv.url });
    expect(flag.stderr).toContain(`${srv.url} refused the token from --token`);
    const env = await cli(['image', 'list'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: 'dfa_wrong' });
    expect(env.stderr).toContain('refused the token from DESKFUSE_TOKEN');
    const stale = path.join(tmp.dir, 'stale');
    mkdirSync(stale);
    writeFileSync(path.join(stale, 'admin.token'), 'dfa_of_another_install\n');
    const file = await cli(['image', 'list'], { DESKFUSE_SERVER: srv.url, DESKFUSE_DATA: stale });
    expect(file.stderr).toContain(`refused the token from ${path.join(stale, 'admin.token')}`);
    for (const r of [none, flag, env, file]) {
      expect(r.stderr).toContain('--token');
      expect(r.stderr).toContain('DESKFUSE_TOKEN');
      expect(r.stderr).not.toMatch(/Authorization|Bearer/);
    }
    // The data directory's token is found and works.
    expect((await cli(['image', 'list'], { DESKFUSE_SERVER: srv.url, DESKFUSE_DATA: path.join(tmp.dir, 'data') })).code).toBe(0);
  });

  it("the server's validation errors name the CLI argument, say what it must be and what was given", async () => {
    const env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    const cases: Array<[string[], string]> = [
      [['vdi', 'session', 'show', 'BADID'], 'ID: expected a session id: 10 hex digits, as deskfuse vdi session list shows, got "BADID"'],
      [['endpoint', 'show', 'x'.repeat(70)], `ID: expected at most 64 characters, got "${'x'.repeat(70)}"`],
      [['ref', 'log', 'win', '--limit', '0'], '--limit: expected a number of at least 1, got "0"'],
      [['desktop', 'token', 'alice', '--ttl', '999999999'], '--ttl: expected a number of at most 31536000, got "999999999"'],
      [['vdi', 'session', 'list', '--desktop', 'Bad Name'], '--desktop: expected a name of 1-64 characters a-z 0-9 . _ -, starting with a letter or digit, got "Bad Name"'],
    ];
    for (const [args, says] of cases) {
      const r = await cli([...args, '--json'], env);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toContain(says);
      expect(r.stderr, args.join(' ')).toContain(`(deskfuse ${args.slice(0, args[0] === 'vdi' ? 3 : 2).join(' ')} --help)`);
      expect(r.stderr).not.toMatch(/params\.|querystring\.|body\.|must match pattern|must be/);
      expect(r.json.error.argument, args.join(' ')).toBe(says.split(':')[0]);
    }
  });

  it('a server without http:// is taken as http://HOST:PORT; another scheme is a coded usage error saying how to write it', async () => {
    const hostPort = srv.url.replace('http://', '');
    const flag = await cli(['image', 'list', '--server', hostPort, '--json'], { DESKFUSE_TOKEN: srv.token });
    expect(flag.code, flag.stderr).toBe(0);
    expect(flag.json.images).toEqual([]);
    const env = await cli(['image', 'list'], { DESKFUSE_SERVER: hostPort, DESKFUSE_TOKEN: srv.token });
    expect(env.code, env.stderr).toBe(0);
    const bad = await cli(['image', 'list', '--server', `ftp://${hostPort}`, '--json'], { DESKFUSE_TOKEN: srv.token });
    expect(bad.code).toBe(2);
    expect(bad.json.error).toMatchObject({ code: 'DF_ERR_USAGE', option: '--server' });
    expect(bad.stderr).toContain('--server: expected http://HOST:PORT');
    const badEnv = await cli(['image', 'list'], { DESKFUSE_SERVER: 'ftp://x', DESKFUSE_TOKEN: srv.token });
    expect(badEnv.stderr).toContain('DESKFUSE_SERVER: expected http://HOST:PORT');
    for (const r of [flag, env, bad, badEnv]) expect(r.stderr).not.toContain('ERR_INVALID_URL');
  });

  it('the global options may come before the command (deskfuse --server URL --token T --json image list)', async () => {
    const before = await cli(['--server', srv.url, `--token=${srv.token}`, '--json', 'image', 'list'], {});
    expect(before.code, before.stderr).toBe(0);
    expect(before.json.images).toEqual([]);
    const wrong = await cli(['--token', 'dfa_wrong', 'image', 'list'], { DESKFUSE_SERVER: srv.url });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(`${srv.url} refused the token from --token`);
    const alone = await cli(['--server', srv.url], {});
    expect(alone.code).toBe(2);
    expect(alone.stderr).toContain('unknown command "--server"');
  });
});

describe('7. image log, publish, agent status, tables', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let env: Record<string, string>;
  const f = (n: string) => path.join(tmp.dir, n);
  beforeAll(async () => {
    tmp = tempDir('df-cliux7-');
    srv = await startInProcess(f('data'));
    env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token, TZ: 'UTC' };
    baseDisk(f('v1.img'));
    copyFileSync(f('v1.img'), f('v2.img'));
    patch(f('v2.img'), 3 * 1024 * 1024, prng(7)(70_000));
    copyFileSync(f('v2.img'), f('v3.img'));
    patch(f('v3.img'), 9 * 1024 * 1024, prng(8)(70_000));
    const run = async (args: string[]) => {
      const r = await cli(args, env);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      return r;
    };
    await run(['image', 'create', 'win', '--from', f('v1.img'), '-m', 'base']);
    await run(['image', 'publish', 'win', '--from', f('v2.img'), '-m', 'office update']); // 2 on main
    await run(['image', 'publish', 'win', '--from', f('v3.img'), '--ref', 'test', '-m', 'trial']); // 3 on test
  }, 120_000);
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  it('image log NAME shows every ref\'s line with the refs beside their versions; NAME@2 starts at version 2, NAME@REF at the ref', async () => {
    const log = await cli(['image', 'log', 'win'], env);
    expect(log.code, log.stderr).toBe(0);
    const rows = log.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s{2,}/));
    expect(rows.map((r) => r[0])).toEqual(['3', '2', '1']);
    expect(rows.map((r) => r[2])).toEqual(['test', 'main', 'import']); // REFS (none at 1: the next column)
    const json = await cli(['image', 'log', 'win', '--json'], env);
    expect(json.json.versions.map((v: { version: number }) => v.version)).toEqual([3, 2, 1]);
    expect(json.json.refs.map((r: { name: string; version: number }) => `${r.name}=${r.version}`).sort()).toEqual(['main=2', 'test=3']);
    const at2 = await cli(['image', 'log', 'win@2', '--json'], env);
    expect(at2.json.versions.map((v: { version: number }) => v.version)).toEqual([2, 1]);
    const atTest = await cli(['image', 'log', 'win@test', '--json'], env);
    expect(atTest.json.versions.map((v: { version: number }) => v.version)).toEqual([3, 2, 1]);
    const atMain = await cli(['image', 'log', 'win@main', '--json'], env);
    expect(atMain.json.versions.map((v: { version: number }) => v.version)).toEqual([2, 1]);
    const missing = await cli(['image', 'log', 'win@9'], env);
    expect(missing.stderr).toContain('DF_ERR_VERSION_NOT_FOUND');
  });

  it('publishing an identical disk says "nothing changed since version N", exits 0 and makes no version; --allow-empty makes one', async () => {
    const same = await cli(['image', 'publish', 'win', '--from', f('v2.img')], env);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stdout).toBe('win: nothing changed since version 2 (main is at 2): no version made (--allow-empty makes one)');
    const sameJson = await cli(['image', 'publish', 'win', '--from', f('v2.img'), '--json'], env);
    expect(sameJson.json).toMatchObject({ unchanged: true, version: 2, head: 2, chunksChanged: 0, conflict: null });
    expect((await cli(['image', 'show', 'win', '--json'], env)).json.versions).toBe(3);

    const forced = await cli(['image', 'publish', 'win', '--from', f('v2.img'), '--allow-empty', '-m', 'rebuild marker', '--json'], env);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.json).toMatchObject({ unchanged: false, version: 4, parent: 2, chunksChanged: 0 });

    // The API itself: a publish commit whose layer changes nothing answers 200 unchanged; allowEmpty makes a version.
    const show = (await cli(['image', 'show', 'win', '--json'], env)).json;
    const layer = encodeLayer({ geometry: { virtualSize: show.virtualSize, chunkSize: show.chunkSize }, hasMasks: false, entries: [] });
    const auth = { authorization: `Bearer ${srv.token}` };
    const staged = await (await fetch(`${srv.url}/api/v1/images/win/layers`, { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: new Uint8Array(layer) })).json() as { layer: string };
    const commit = (allowEmpty?: boolean) => fetch(`${srv.url}/api/v1/images/win/commits`, {
      method: 'POST', headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ parent: 4, ref: 'main', layer: staged.layer, kind: 'publish', ...(allowEmpty ? { allowEmpty } : {}) }),
    });
    const un = await commit();
    expect(un.status).toBe(200);
    expect(await un.json()).toMatchObject({ outcome: 'unchanged', version: { version: 4 }, ref: 'main', head: 4 });
    const made = await commit(true);
    expect(made.status).toBe(201);
    expect(await made.json()).toMatchObject({ outcome: 'fast-forward', version: { version: 5, parent: 4, chunksChanged: 0 } });
  });

  it('agent status prints a summary people read; --json keeps every raw field', async () => {
    await cli(['desktop', 'create', 'ann', '--image', 'win'], env);
    const token = (await cli(['desktop', 'token', 'ann'], env)).stdout.trim();
    writeFileSync(f('ann.img'), '');
    truncateSync(f('ann.img'), 64 * 1024 * 1024); // a blank disk with room for the image and its state area
    const sync = await cli(['agent', 'sync', '--disk', f('ann.img'), '--desktop', 'ann'], { ...env, DESKFUSE_TOKEN: token });
    expect(sync.code, sync.stderr).toBe(0);
    expect(sync.stdout).toMatch(/^ann: blank -> 5: \d+ chunks? written/);
    const st = await cli(['agent', 'status', '--disk', f('ann.img')], env);
    expect(st.code, st.stderr).toBe(0);
    expect(st.stdout).toMatch(/^.*ann\.img: desktop ann \(image win\), clean at version \d+: sealed after its last sync or commit/);
    expect(st.stdout).toMatch(/\n {2}disk +64\.0 MiB; the image is 32\.0 MiB in 64\.0 KiB chunks \(512 positions, \d+ with data\)\n/);
    expect(st.stdout).not.toMatch(/[{}]|stateArea|chunkPositions|: undefined/);
    const raw = await cli(['agent', 'status', '--disk', f('ann.img'), '--json'], env);
    expect(raw.json).toMatchObject({ state: 'clean', desktop: 'ann', image: 'win', chunkPositions: 512, stateArea: { size: expect.any(Number) } });
    const blank = f('blank.img');
    writeFileSync(blank, Buffer.alloc(1024 * 1024));
    expect((await cli(['agent', 'status', '--disk', blank], env)).stdout).toContain('blank: no deskfuse state; agent sync provisions it');
  });

  it('tables: "1 version", a REFS column that stays narrow (every ref in --json), times as 2026-12-07 15:04', async () => {
    const one = await cli(['image', 'create', 'solo', '--from', f('v1.img')], env);
    expect(one.code, one.stderr).toBe(0);
    expect((await cli(['image', 'show', 'solo'], env)).stdout).toMatch(/, 1 version, created /);
    expect((await cli(['image', 'show', 'win'], env)).stdout).toMatch(/, 5 versions, created /);

    for (const d of ['desk-a-long-name', 'desk-b-long-name', 'desk-c-long-name']) expect((await cli(['desktop', 'create', d, '--image', 'win'], env)).code).toBe(0);
    for (const r of ['stable-channel', 'beta-channel', 'nightly-channel-with-a-long-name']) {
      expect((await cli(['ref', 'set', 'win', r, '2', '--expect', 'none'], env)).code).toBe(0);
    }
    const list = await cli(['image', 'list'], env);
    const row = list.stdout.split('\n').find((l) => l.startsWith('win '))!;
    const refs = row.split(/\s{2,}/).pop()!;
    expect(refs.length).toBeLessThanOrEqual(40);
    expect(refs).toMatch(/^main=5 /);
    expect(refs).toContain('+4 desktops'); // ann and the three above
    expect(refs).toMatch(/\+\d+ more/);
    const json = await cli(['image', 'list', '--json'], env);
    expect(json.json.images.find((i: { name: string }) => i.name === 'win').refs).toHaveLength(9);

    const log = await cli(['image', 'log', 'win'], env);
    const v1 = (await cli(['image', 'log', 'win@1', '--json'], env)).json.versions[0].createdAt as string;
    expect(log.stdout).toContain(`${v1.slice(0, 10)} ${v1.slice(11, 16)}`);
    for (const out of [log.stdout, (await cli(['ref', 'log', 'win'], env)).stdout, (await cli(['image', 'show', 'win'], env)).stdout, (await cli(['token', 'list'], env)).stdout]) {
      expect(out).toMatch(/\d{4}-\d\d-\d\d \d\d:\d\d/);
      expect(out).not.toMatch(/\d\dT\d\d:\d\d|\d{4}-\d\d-\d\dT|\.\d{3}Z/);
    }
  });
});
