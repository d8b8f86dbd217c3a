#!/usr/bin/env node
// Builds native/*.c (deskfuse_native.c and what it registers) into dist/native/deskfuse_native.node with the system C compiler
// (no node-gyp: one file, Node-API only, so the .node works with any Node >= 20 on this libc).
// Skips the compile when the output is newer than the source and this script.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const nativeDir = path.join(root, 'native');
const srcs = readdirSync(nativeDir).filter((f) => /\.[ch]$/.test(f)).map((f) => path.join(nativeDir, f));
const out = path.join(root, 'dist/native/deskfuse_native.node');
const cc = process.env.CC || 'cc';

function fail(msg) {
  console.error(`build-native: ${msg}`);
  process.exit(1);
}

function nodeInclude() {
  const candidates = [path.join(path.dirname(process.execPath), '../include/node')];
  try {
    const nodedir = execFileSync('npm', ['config', 'get', 'nodedir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    if (nodedir && nodedir !== 'undefined' && nodedir !== 'null') candidates.push(path.join(nodedir, 'include/node'));
  } catch { /* npm missing: only the first candidate */ }
  const found = candidates.find((d) => existsSync(path.join(d, 'node_api.h')));
  if (!found) fail(`node_api.h not found (looked in ${candidates.join(', ')}); install Node's headers (Debian: apt-get install libnode-dev, or use the nodejs.org tarball) or set npm's nodedir`);
  return found;
}

const mtime = (f) => (existsSync(f) ? statSync(f).mtimeMs : 0);
if (mtime(out) > Math.max(...srcs.map(mtime), mtime(import.meta.filename))) process.exit(0);

if (spawnSync(cc, ['--version'], { stdio: 'ignore' }).status !== 0) {
  fail(`no C compiler ('${cc}'): apt-get install gcc libc6-dev  (or run scripts/setup-deps.sh)`);
}
mkdirSync(path.dirname(out), { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
const args = ['-O2', '-shared', '-fPIC', '-std=gnu11', '-Wall', '-Wextra', '-Wno-unused-parameter', '-fvisibility=hidden',
  '-DNODE_GYP_MODULE_NAME=deskfuse_native', '-DNAPI_VERSION=8', `-I${nodeInclude()}`, '-pthread', '-o', tmp, ...srcs.filter((f) => f.endsWith('.c'))];
const r = spawnSync(cc, args, { stdio: 'inherit' });
if (r.status !== 0) {
  fail(`'${cc} ${args.join(' ')}' failed (exit ${r.status}); if headers such as <sys/socket.h> are missing: apt-get install gcc libc6-dev`);
}
renameSync(tmp, out);
