import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { DEFAULTS, loadServerConfig, NBD_KEYS, NETBOOT_KEYS, TOP_KEYS } from './server.js';
import { TLS_KEYS } from './tls.js';

const EXAMPLE = path.resolve(import.meta.dirname, '../../deploy/deskfuse.example.json');

let dir: string;
beforeEach(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'deskfuse-example-')); });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function write(content: unknown): string {
  const f = path.join(dir, 'c.json');
  writeFileSync(f, JSON.stringify(content));
  return f;
}

function problemsOf(file: string): string[] {
  try {
    loadServerConfig({ file, env: {} });
  } catch (err) {
    expect((err as DeskfuseError).code).toBe('DF_ERR_CONFIG');
    return (err as DeskfuseError).fields.problems as string[];
  }
  throw new Error('expected DF_ERR_CONFIG');
}

describe('the shipped example config (deploy/deskfuse.example.json)', () => {
  it('loads and validates, with no warning', () => {
    const warnings: string[] = [];
    const c = loadServerConfig({ file: EXAMPLE, env: {}, warn: (m) => warnings.push(m) });
    expect(warnings).toEqual([]);
    expect(c.dataDir).toBe('/var/lib/deskfuse');
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 8080 });
    expect(c.logFormat).toBe('json');
    expect(c.metricsListen).toBeNull();
    expect(c.nbd.listen).toEqual({ host: '0.0.0.0', port: 10809 });
    expect(c.retention).toEqual(DEFAULTS.retention);
  });

  it('names every config-file key (a new key must be added to it)', () => {
    const ex = JSON.parse(readFileSync(EXAMPLE, 'utf8')) as Record<string, Record<string, unknown>>;
    for (const k of TOP_KEYS) expect(Object.keys(ex), k).toContain(k);
    for (const k of NBD_KEYS) expect(Object.keys(ex.nbd!), `nbd.${k}`).toContain(k);
    for (const k of NETBOOT_KEYS) expect(Object.keys(ex.netboot!), `netboot.${k}`).toContain(k);
    for (const k of TLS_KEYS) expect(Object.keys(ex.tls!), `tls.${k}`).toContain(k);
    for (const block of ['enrolment', 'retention', 'gc', 'scrub', 'packCache', 'admission', 'tftp', 'signing'] as const) {
      expect(Object.keys(ex[block]!).sort(), block).toEqual(Object.keys(DEFAULTS[block]).sort());
    }
  });
});

describe('config-file key names', () => {
  it('"data" is the file key, as the flag --data; the old "dataDir" still works with a deprecation warning', () => {
    expect(loadServerConfig({ file: write({ data: '/srv/df' }), env: {} }).dataDir).toBe('/srv/df');
    const warnings: string[] = [];
    expect(loadServerConfig({ file: write({ dataDir: '/srv/old' }), env: {}, warn: (m) => warnings.push(m) }).dataDir).toBe('/srv/old');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('key "dataDir" is deprecated: call it "data"');
  });

  it('both names at once is a problem, not a silent pick', () => {
    expect(problemsOf(write({ data: '/a', dataDir: '/b' }))).toEqual([expect.stringContaining('"dataDir" and "data" both given')]);
  });

  it('unknown keys are reported with the nearest known key', () => {
    const p = problemsOf(write({ datadir: '/x', loglevel: 'info', 'log-format': 'json', colour: 'blue', nbdListen: 'off', nbd: { listn: 'off' }, gc: { graceSecond: 5 }, retention: { keepLastt: 3 } }));
    expect(p).toEqual([
      'config file: unknown key "datadir" (did you mean "data"?)',
      'config file: unknown key "loglevel" (did you mean "logLevel"?)',
      'config file: unknown key "log-format" (did you mean "logFormat"?)',
      'config file: unknown key "colour"',
      'config file: unknown key "nbdListen" (did you mean nbd.listen?)',
      'config file: unknown key nbd.listn (did you mean nbd.listen?)',
      'config file: unknown key retention.keepLastt (did you mean retention.keepLast?)',
      'config file: unknown key gc.graceSecond (did you mean gc.graceSeconds?)',
    ]);
  });

  it('a file that is not a JSON object is DF_ERR_CONFIG', () => {
    expect(() => loadServerConfig({ file: write([1, 2]), env: {} })).toThrow(/expected a JSON object/);
  });
});
