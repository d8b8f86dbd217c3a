#!/usr/bin/env node
// Runs deskfuse's DHCP service (and optionally the RA responder) from dist/ inside a test network
// namespace: `ip netns exec NS node dhcp-runner.mjs '<json>'`. Prints one JSON line per event on
// stdout ({"ready":true} first); logs go to stderr. SIGTERM closes everything and exits.
// Full mode keeps its pool in the SQLite metadata database named by `dhcp.pool.meta` (several runners
// may share one file: several servers on one database); `dhcp.pool.importFile` is a lease file of an
// older release, imported first.
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');
const { startDhcp } = await import(path.join(ROOT, 'dist/src/dhcp/server.js'));
const { tableBooter } = await import(path.join(ROOT, 'dist/src/dhcp/policy.js'));
const { startRa } = await import(path.join(ROOT, 'dist/src/ra/responder.js'));
const { importLeaseFile } = await import(path.join(ROOT, 'dist/src/dhcp/leases.js'));
const { openMeta } = await import(path.join(ROOT, 'dist/src/meta/open.js'));
const { SqliteEngine } = await import(path.join(ROOT, 'dist/src/meta/sqlite-engine.js'));

const cfg = JSON.parse(process.argv[2]);
const level = cfg.logLevel ?? 'info';
const levels = ['trace', 'debug', 'info', 'warn', 'error'];
const logger = (bindings) => Object.fromEntries([
  ...levels.map((l) => [l, (obj, msg) => {
    if (levels.indexOf(l) < levels.indexOf(level)) return;
    const o = { level: l, ...bindings, ...obj, msg };
    if (o.err instanceof Error) o.err = { message: o.err.message, code: o.err.code };
    process.stderr.write(JSON.stringify(o) + '\n');
  }]),
  ['child', (b) => logger({ ...bindings, ...b })],
]);
const log = logger({});
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const services = [];
let meta;
if (cfg.dhcp) {
  let pool;
  if (cfg.dhcp.pool) {
    const { meta: file, importFile, ...rest } = cfg.dhcp.pool;
    meta = await openMeta(new SqliteEngine(file));
    if (importFile) await importLeaseFile(importFile, meta.dhcp, log);
    pool = { ...rest, leases: meta.dhcp };
  }
  services.push(await startDhcp({
    ...cfg.dhcp,
    ...(pool ? { pool } : {}),
    booter: tableBooter({ scriptUrl: cfg.scriptUrl, available: new Set(cfg.available ?? ['undionly.kpxe', 'snponly.efi']), ...(cfg.secureBootFile ? { secureBootFile: cfg.secureBootFile } : {}) }),
    log,
    onEvent: (e) => out(e),
    onAddress: (mac, ip) => out({ kind: 'address', mac, ip }),
  }));
}
if (cfg.ra) services.push(await startRa({ interface: cfg.ra.interface, log, intervalSeconds: cfg.ra.intervalSeconds }));
out({ ready: true });
process.on('SIGTERM', async () => {
  await Promise.all(services.map((s) => s.close()));
  await meta?.close();
  process.exit(0);
});
