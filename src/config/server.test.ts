import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { DEFAULTS, loadServerConfig, parseHostPort, resolveNbdTls, type ConfigSources } from './server.js';

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-config-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function file(content: unknown): string {
  const f = path.join(dir, 'config.json');
  writeFileSync(f, typeof content === 'string' ? content : JSON.stringify(content));
  return f;
}

function configError(src: ConfigSources): DeskfuseError {
  try {
    loadServerConfig(src);
  } catch (err) {
    expect(err).toBeInstanceOf(DeskfuseError);
    expect((err as DeskfuseError).code).toBe('DF_ERR_CONFIG');
    return err as DeskfuseError;
  }
  throw new Error('expected DF_ERR_CONFIG');
}

describe('loadServerConfig', () => {
  it('defaults when given nothing', () => {
    expect(loadServerConfig({ env: {} })).toEqual({ ...DEFAULTS, dataDir: path.resolve('./data'), tls: { ...DEFAULTS.tls, dir: path.resolve('./data/tls') } });
  });

  it('tls: auto is on unless the HTTP address is loopback; HTTPS on the HTTP host at 8443; files and names validated', () => {
    expect(loadServerConfig({ env: {} }).tls.mode).toBe('off');
    expect(loadServerConfig({ env: {}, flags: { listen: '[::1]:8080' } }).tls.mode).toBe('off');
    const lan = loadServerConfig({ env: {}, flags: { listen: '0.0.0.0:8080', data: '/srv/df' } }).tls;
    expect(lan).toMatchObject({ mode: 'on', listen: { host: '0.0.0.0', port: 8443 }, dir: '/srv/df/tls', plainHttp: 'boot', certFile: null });
    expect(loadServerConfig({ env: { DESKFUSE_TLS: 'off' }, flags: { listen: '0.0.0.0:8080' } }).tls.mode).toBe('off');
    expect(loadServerConfig({ env: { DESKFUSE_TLS: 'on', DESKFUSE_HTTPS_LISTEN: '127.0.0.1:9443' } }).tls).toMatchObject({ mode: 'on', listen: { host: '127.0.0.1', port: 9443 } });
    expect(loadServerConfig({ env: {}, flags: { tls: 'off', listen: '10.0.0.1:8080' } }).tls.mode).toBe('off');
    let err: { fields?: { problems?: string[] } } = {};
    try {
      loadServerConfig({ env: {}, flags: { tls: 'maybe', httpsListen: 'nope' } });
    } catch (e) {
      err = e as typeof err;
    }
    expect(err.fields?.problems).toEqual(expect.arrayContaining([expect.stringContaining('tls: expected auto, on or off'), expect.stringContaining('httpsListen: expected HOST:PORT')]));
  });

  it('precedence: flags > env > file > defaults, per key', () => {
    const f = file({ data: '/from/file', listen: '10.0.0.1:1', logLevel: 'warn', bodyLimit: 2 * 1024 * 1024 });
    const env = { DESKFUSE_DATA: '/from/env', DESKFUSE_LISTEN: '10.0.0.2:2', DESKFUSE_LOG_LEVEL: 'debug' };
    expect(loadServerConfig({ file: f })).toMatchObject({ dataDir: '/from/file', listen: { host: '10.0.0.1', port: 1 }, logLevel: 'warn', bodyLimit: 2097152 });
    expect(loadServerConfig({ file: f, env })).toMatchObject({ dataDir: '/from/env', listen: { host: '10.0.0.2', port: 2 }, logLevel: 'debug', bodyLimit: 2097152 });
    expect(loadServerConfig({ file: f, env, flags: { data: '/from/flag', listen: '10.0.0.3:3', logLevel: 'trace' } }))
      .toMatchObject({ dataDir: '/from/flag', listen: { host: '10.0.0.3', port: 3 }, logLevel: 'trace', bodyLimit: 2097152 });
    // Mixed: each key falls through independently.
    expect(loadServerConfig({ file: f, env: { DESKFUSE_LISTEN: '10.0.0.2:2' }, flags: { logLevel: 'error' } }))
      .toMatchObject({ dataDir: '/from/file', listen: { host: '10.0.0.2', port: 2 }, logLevel: 'error', bodyLimit: 2097152 });
  });

  it('resolves a relative dataDir to an absolute path', () => {
    expect(loadServerConfig({ flags: { data: 'rel/dir' } }).dataDir).toBe(path.resolve('rel/dir'));
  });

  it('reports every problem at once', () => {
    const err = configError({
      file: file({ bodyLimit: 1000, colour: 'blue' }),
      env: { DESKFUSE_LISTEN: 'nohost' },
      flags: { logLevel: 'loud', data: '' },
    });
    const problems = err.fields.problems as string[];
    expect(problems).toHaveLength(5);
    expect(problems).toEqual(expect.arrayContaining([
      'config file: unknown key "colour"',
      'data: expected a non-empty path',
      'listen: expected HOST:PORT, got "nohost"',
      expect.stringMatching(/^logLevel: expected one of fatal, .*, got "loud"$/),
      'bodyLimit: expected an integer of at least 1048576',
    ]));
    for (const p of problems) expect(err.message).toContain(p);
  });

  it('refuses values of the wrong type in the file', () => {
    const problems = configError({ file: file({ data: 5, listen: 8080, logLevel: true, bodyLimit: '1g' }), env: {} }).fields.problems as string[];
    expect(problems).toHaveLength(4);
    expect(problems.map((p) => p.split(':')[0])).toEqual(['data', 'listen', 'logLevel', 'bodyLimit']);
  });

  it('an unreadable or malformed file is DF_ERR_CONFIG naming the file', () => {
    const bad = file('{ not json');
    expect(configError({ file: bad }).fields.file).toBe(bad);
    expect(configError({ file: path.join(dir, 'missing.json') }).message).toContain('missing.json');
  });

  it('the result is deeply frozen', () => {
    const cfg = loadServerConfig({ env: {} });
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(Object.isFrozen(cfg.listen)).toBe(true);
    expect(() => { (cfg.listen as { port: number }).port = 1; }).toThrow(TypeError);
    expect(cfg.listen.port).toBe(8080);
    // Loading does not freeze or alter the shared defaults.
    expect(DEFAULTS.listen.port).toBe(8080);
  });
});

describe('parseHostPort', () => {
  it.each([
    ['127.0.0.1:8080', { host: '127.0.0.1', port: 8080 }],
    ['[::1]:9000', { host: '::1', port: 9000 }],
    [':80', { host: '0.0.0.0', port: 80 }],
    ['example.lan:0', { host: 'example.lan', port: 0 }],
    ['h:65535', { host: 'h', port: 65535 }],
  ])('%j', (s, want) => {
    const problems: string[] = [];
    expect(parseHostPort(s, problems, 'listen')).toEqual(want);
    expect(problems).toEqual([]);
  });

  it.each([['h:65536', 'port must be 0-65535'], ['h', 'expected HOST:PORT'], ['h:', 'expected HOST:PORT'], ['::1:80', 'expected HOST:PORT'], ['h:-1', 'expected HOST:PORT']])(
    'refuses %j',
    (s, msg) => {
      const problems: string[] = [];
      expect(parseHostPort(s, problems, 'listen')).toBeUndefined();
      expect(problems).toHaveLength(1);
      expect(problems[0]).toContain(msg);
      expect(problems[0]).toMatch(/^listen: /);
    },
  );

  it('nbd: on the HTTP host at 10809 by default; HOST[:PORT] or off; anonymous read and limits validated', () => {
    expect(loadServerConfig({ env: {} }).nbd).toEqual({ listen: { host: '127.0.0.1', port: 10809 }, anonymousRead: false, publicHost: null, cacheMiB: 4096, leaseSeconds: 3600, checkpointSeconds: 10, heartbeatSeconds: 10, tls: null, tlsPskFile: null, threads: null });
    expect(loadServerConfig({ env: {}, flags: { listen: '0.0.0.0:8080' } }).nbd.listen).toEqual({ host: '0.0.0.0', port: 10809 });
    expect(loadServerConfig({ env: {}, flags: { nbdListen: '10.0.0.1' } }).nbd.listen).toEqual({ host: '10.0.0.1', port: 10809 });
    expect(loadServerConfig({ env: { DESKFUSE_NBD_LISTEN: '127.0.0.1:0' } }).nbd.listen).toEqual({ host: '127.0.0.1', port: 0 });
    expect(loadServerConfig({ env: {}, flags: { nbdListen: 'off', nbdAnonymousRead: true } }).nbd).toMatchObject({ listen: null, anonymousRead: true });
    expect(() => loadServerConfig({ env: {}, flags: { nbdListen: 'h:99999' } })).toThrow(/nbdListen: port must be 0-65535/);
  });

  it('nbd.tls: off, on or required from --nbd-tls, DESKFUSE_NBD_TLS or the file; default follows the server\'s TLS; a PSK file needs TLS', () => {
    expect(loadServerConfig({ env: {} }).nbd.tls).toBeNull();
    expect(resolveNbdTls({ tls: null }, false)).toBe('off');
    expect(resolveNbdTls({ tls: null }, true)).toBe('required');
    expect(resolveNbdTls({ tls: 'on' }, true)).toBe('on');
    expect(loadServerConfig({ env: {}, flags: { nbdTls: 'required' } }).nbd.tls).toBe('required');
    expect(loadServerConfig({ env: { DESKFUSE_NBD_TLS: 'on' } }).nbd.tls).toBe('on');
    expect(loadServerConfig({ env: {}, file: file({ nbd: { tls: 'off', tlsPskFile: null } }) }).nbd).toMatchObject({ tls: 'off', tlsPskFile: null });
    expect(loadServerConfig({ env: {}, file: file({ nbd: { tls: 'required', tlsPskFile: '/etc/deskfuse/keys.psk' } }) }).nbd.tlsPskFile).toBe('/etc/deskfuse/keys.psk');
    const e = configError({ env: {}, file: file({ nbd: { tls: 'yes', tlsPskFile: 3 } }) });
    expect(e.message).toMatch(/nbd.tls: expected off, on or required, got "yes"/);
    expect(e.message).toMatch(/nbd.tlsPskFile: expected a file path/);
    expect(configError({ env: {}, file: file({ nbd: { tls: 'off', tlsPskFile: '/k.psk' } }) }).message).toMatch(/nbd.tlsPskFile: given, but nbd.tls is off/);
  });

  it('serverName: the host name by default; --server-name, DESKFUSE_SERVER_NAME or the file, validated; nbd.checkpointSeconds and heartbeatSeconds', () => {
    expect(loadServerConfig({ env: {} }).serverName).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]*$/);
    expect(loadServerConfig({ env: {}, file: file({ serverName: 'f1' }) }).serverName).toBe('f1');
    expect(loadServerConfig({ env: { DESKFUSE_SERVER_NAME: 'e1' }, file: file({ serverName: 'f1' }) }).serverName).toBe('e1');
    expect(loadServerConfig({ env: { DESKFUSE_SERVER_NAME: 'e1' }, flags: { serverName: 'srv-a.lan' } }).serverName).toBe('srv-a.lan');
    expect(configError({ env: {}, flags: { serverName: 'a b' } }).message).toMatch(/serverName: expected 1-63 letters/);
    expect(configError({ env: {}, file: file({ serverName: 7 }) }).message).toMatch(/serverName: .*got 7/);
    expect(loadServerConfig({ env: {}, file: file({ nbd: { checkpointSeconds: 2 } }) }).nbd.checkpointSeconds).toBe(2);
    expect(configError({ env: {}, file: file({ nbd: { checkpointSeconds: 0 } }) }).message).toMatch(/nbd.checkpointSeconds: expected an integer 1-3600/);
    expect(loadServerConfig({ env: {}, file: file({ nbd: { heartbeatSeconds: 30 } }) }).nbd.heartbeatSeconds).toBe(30);
    expect(loadServerConfig({ env: { DESKFUSE_NBD_THREADS: '0' } }).nbd.threads).toBe(0);
    expect(loadServerConfig({ env: {}, file: file({ nbd: { threads: 3 } }) }).nbd.threads).toBe(3);
    expect(configError({ env: { DESKFUSE_NBD_THREADS: 'many' } }).message).toMatch(/nbd.threads: expected an integer 0-64/);
    expect(configError({ env: {}, file: file({ nbd: { threads: 65 } }) }).message).toMatch(/nbd.threads: expected an integer 0-64/);
    expect(configError({ env: {}, file: file({ nbd: { heartbeatSeconds: 'x' } }) }).message).toMatch(/nbd.heartbeatSeconds: expected an integer 1-3600/);
  });

  it('netboot.commitWindowSeconds: 120 by default, from the file or DESKFUSE_COMMIT_WINDOW_SECONDS, validated', () => {
    expect(loadServerConfig({ env: {} }).netboot.commitWindowSeconds).toBe(120);
    expect(loadServerConfig({ env: {}, file: file({ netboot: { commitWindowSeconds: 300 } }) }).netboot.commitWindowSeconds).toBe(300);
    expect(loadServerConfig({ env: { DESKFUSE_COMMIT_WINDOW_SECONDS: '60' } }).netboot.commitWindowSeconds).toBe(60);
    expect(configError({ env: { DESKFUSE_COMMIT_WINDOW_SECONDS: 'soon' } }).message).toMatch(/netboot.commitWindowSeconds: expected an integer 10-3600/);
    expect(configError({ env: {}, file: file({ netboot: { commitWindowSeconds: 5 } }) }).message).toMatch(/commitWindowSeconds/);
  });

  it('netboot.secureBoot: off by default; true takes Debian\'s package paths; paths from the file; env on|off; bad values reported', () => {
    expect(loadServerConfig({ env: {} }).netboot.secureBoot).toBeNull();
    expect(loadServerConfig({ env: {}, file: file({ netboot: { secureBoot: true } }) }).netboot.secureBoot).toEqual({
      shim: '/usr/lib/shim/shimx64.efi.signed', grub: '/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed',
    });
    expect(loadServerConfig({ env: {}, file: file({ netboot: { secureBoot: { shim: '/sb/shim.efi' } } }) }).netboot.secureBoot).toEqual({
      shim: '/sb/shim.efi', grub: '/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed',
    });
    expect(loadServerConfig({ env: { DESKFUSE_SECURE_BOOT: 'on' } }).netboot.secureBoot?.shim).toBe('/usr/lib/shim/shimx64.efi.signed');
    expect(loadServerConfig({ env: { DESKFUSE_SECURE_BOOT: 'off' }, file: file({ netboot: { secureBoot: true } }) }).netboot.secureBoot).toBeNull();
    const err = configError({ env: { DESKFUSE_SECURE_BOOT: 'yes' }, file: file({ netboot: { secureBoot: { shim: 3, kernel: '/k' } } }) });
    expect(err.message).toContain('DESKFUSE_SECURE_BOOT: expected on or off');
    expect(configError({ env: {}, file: file({ netboot: { secureBoot: { shim: 3, kernel: '/k' } } }) }).message).toMatch(/netboot.secureBoot.shim: expected a file path[\s\S]*unknown key netboot.secureBoot.kernel|unknown key netboot.secureBoot.kernel[\s\S]*netboot.secureBoot.shim: expected a file path/);
    expect(configError({ env: {}, file: file({ netboot: { secureBoot: 'yes' } }) }).message).toContain('netboot.secureBoot: expected true, false or');
  });

  it('enrolment and retention: documented defaults, integers from the config file, every bad value reported', () => {
    const c = loadServerConfig({ env: {} });
    expect(c.enrolment).toEqual({ pendingMax: 1000, perMinute: 60, pendingSeconds: 86400 });
    expect(c.retention).toEqual({ intervalSeconds: 3600, eventsSeconds: 30 * 86400, tokensSeconds: 7 * 86400, keepLast: 10, keepDays: 14, conflictDays: 30, deltaIdleDays: 30, pruneVersions: 1 });
    expect(loadServerConfig({ env: {}, file: file({ enrolment: { pendingMax: 5 }, retention: { intervalSeconds: 0 } }) })).toMatchObject({
      enrolment: { pendingMax: 5, perMinute: 60 }, retention: { intervalSeconds: 0, eventsSeconds: 30 * 86400 },
    });
    const err = configError({ env: {}, file: file({ enrolment: { perMinute: -1, colour: 1 }, retention: { eventsSeconds: 'long' } }) });
    expect(err.message).toContain('enrolment.perMinute: expected an integer');
    expect(err.message).toContain('config file: unknown key enrolment.colour');
    expect(err.message).toContain('retention.eventsSeconds: expected an integer');
    const policy = configError({ env: {}, file: file({ retention: { keepLast: 0, keepDays: -1, conflictDays: 'long', deltaIdleDays: 1.5, pruneVersions: 2 } }) });
    for (const k of ['keepLast: expected an integer 1-1000000', 'keepDays: expected an integer 0-36500', 'conflictDays: expected an integer 0-36500', 'deltaIdleDays: expected an integer 0-36500', 'pruneVersions: expected an integer 0-1']) {
      expect(policy.message).toContain(`retention.${k}`);
    }
    expect(Object.isFrozen(loadServerConfig({ env: {}, file: file({ retention: { keepLast: 3 } }) }).retention)).toBe(true);
  });

  it('scrub: daily at 32 MiB/s by default, 0 = never, bad values reported', () => {
    expect(loadServerConfig({ env: {} }).scrub).toEqual({ intervalSeconds: 86400, mibPerSecond: 32 });
    expect(loadServerConfig({ env: {}, file: file({ scrub: { intervalSeconds: 0 } }) }).scrub).toEqual({ intervalSeconds: 0, mibPerSecond: 32 });
    const err = configError({ env: {}, file: file({ scrub: { mibPerSecond: 0, when: 'night' } }) });
    expect(err.message).toContain('scrub.mibPerSecond: expected an integer');
    expect(err.message).toContain('config file: unknown key scrub.when');
  });

  it('packCache: 2048 MiB by default, 0 = off; admission.maxMbitPerSecond: no cap by default; bad values reported', () => {
    const c = loadServerConfig({ env: {} });
    expect(c.packCache).toEqual({ mib: 2048 });
    expect(c.admission).toEqual({ heavyTransfers: 16, retryAfterSeconds: 5, maxMbitPerSecond: 0 });
    expect(loadServerConfig({ env: {}, file: file({ packCache: { mib: 0 }, admission: { maxMbitPerSecond: 900 } }) })).toMatchObject({ packCache: { mib: 0 }, admission: { maxMbitPerSecond: 900 } });
    const err = configError({ env: {}, file: file({ packCache: { mib: -1, gib: 2 }, admission: { maxMbitPerSecond: 'fast' } }) });
    expect(err).toMatchObject({ code: 'DF_ERR_CONFIG' });
    expect(err.message).toContain('packCache.mib: expected an integer');
    expect(err.message).toContain('config file: unknown key packCache.gib');
    expect(err.message).toContain('admission.maxMbitPerSecond: expected an integer');
  });

  it('tftp: 32 transfers at once and 1000 waiting by default; from the file; 0 transfers, a fraction or a string reported', () => {
    expect(loadServerConfig({ env: {} }).tftp).toEqual({ maxTransfers: 32, maxQueued: 1000 });
    expect(loadServerConfig({ env: {}, file: file({ tftp: { maxTransfers: 2, maxQueued: 0 } }) }).tftp).toEqual({ maxTransfers: 2, maxQueued: 0 });
    const err = configError({ env: {}, file: file({ tftp: { maxTransfers: 0, maxQueued: 'lots', cap: 3 } }) });
    expect(err).toMatchObject({ code: 'DF_ERR_CONFIG' });
    expect(err.message).toContain('tftp.maxTransfers: expected an integer 1-10000, got 0');
    expect(err.message).toContain('tftp.maxQueued: expected an integer 0-100000, got "lots"');
    expect(err.message).toContain('config file: unknown key tftp.cap');
    expect(configError({ env: {}, file: file({ tftp: { maxTransfers: 1.5 } }) }).message).toContain('tftp.maxTransfers: expected an integer');
  });
});

describe('signing config', () => {
  it('defaults to a 24 h signed head, takes the file block, and reports a bad value', () => {
    expect(loadServerConfig({ env: {} }).signing).toEqual({ headSeconds: 86400 });
    expect(loadServerConfig({ env: {}, file: file({ signing: { headSeconds: 3600 } }) }).signing).toEqual({ headSeconds: 3600 });
    const err = configError({ env: {}, file: file({ signing: { headSeconds: 5, freshness: 1 } }) });
    expect(err.message).toContain('signing.headSeconds: expected an integer 60-31536000, got 5');
    expect(err.message).toContain('config file: unknown key signing.freshness');
  });
});
