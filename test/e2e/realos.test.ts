// End to end with a real OS on the endpoint's disk: a minimal Debian 12 with systemd (mmdebstrap;
// test/fixtures/realos/build.sh), the commit-at-shutdown unit installed as initramfs/os-integration/README.md
// says. A BIOS endpoint with a blank disk PXE-boots from our server in a lab namespace and is provisioned
// (real disks repeat chunks: the sync must finish and the image region must equal the source disk), boots
// Debian from its disk, whose marker unit writes a file and runs `systemctl poweroff`; our unit asks the
// server, which wants a commit, so the machine reboots into the boot stage, commits and powers off. The new
// version of the desktop holds the file (read from the exported disk with debugfs).
// DESKFUSE_E2E_ERA=1: the Debian disk has the dm-era hook (initramfs/os-integration/dm-era) and the
// endpoint's disk room for its metadata, so the sync arms tracking and the shutdown commit reads only
// what Debian wrote; the commit's seconds, scan seconds and bytes read are printed (opt-in: one more
// fixture build, and CI time stays as it was).
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eraMetadataBytes, eraSpace } from '../../src/agent/era/arm.js';
import { areaSize, areaStart, fingerprintRegionSize } from '../../src/agent/state-area.js';
import { assertE2ePrerequisites, createLab, startVm, type Lab, type Mark, type Vm } from './harness/index.js';
import { ROOT, startLabAppliance, type LabAppliance } from './lab-appliance.js';
import { endpoint, events, figures, FIGURES_HEADER, fmtFigures, timeline } from './scenario.js';

const MAC = '52:54:00:91:00:e1';
const SERVER_URL = 'http://10.91.0.1:8080';
const CHUNK = 64 * 1024;
const MIB = 1024 * 1024;
const MARKER_DIR = '/var/lib/deskfuse-e2e';
// '1': tracking; 'noarm': the same Debian disk (hook installed) on an endpoint disk with room for the
// fingerprints but not for era metadata, so the agent never arms it: the full-scan commit to compare with.
const ERA_MODE = process.env.DESKFUSE_E2E_ERA ?? '';
const ERA = ERA_MODE === '1';
const HOOK = ERA || ERA_MODE === 'noarm';

/** The boot stage (initramfs/out) and the Debian disk (cached by its inputs: the first build runs mmdebstrap). */
function buildArtifacts(): { disk: string; boot: { partition: number; kernel: string; initrd: string; cmdline: string } } {
  const sh = (cmd: string, args: string[], env: Record<string, string> = {}) =>
    execFileSync(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', timeout: 1_200_000 });
  sh('npm', ['run', '--silent', 'build:initramfs']);
  const t0 = performance.now();
  const dir = sh('bash', ['test/fixtures/realos/build.sh'], { SERVER_URL, ...(HOOK ? { ERA: '1' } : {}) }).trim().split('\n').pop()!;
  console.log(`Debian 12 disk ready in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${dir}`);
  return { disk: path.join(dir, 'disk.img'), boot: JSON.parse(readFileSync(path.join(dir, 'boot.json'), 'utf8')) };
}

/** One QMP command on QEMU's monitor socket (handshake, command, its answer). */
async function qmp(socket: string, execute: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = net.createConnection(socket);
    let buf = '';
    let answers = 0;
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`qmp ${execute}: no answer within 30 s`)); }, 30_000);
    s.on('error', (err) => { clearTimeout(timer); reject(err); });
    s.on('data', (d) => {
      buf += d.toString('utf8');
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, i)) as { QMP?: unknown; return?: unknown; error?: { desc: string } };
        buf = buf.slice(i + 1);
        if (msg.QMP) s.write('{"execute":"qmp_capabilities"}\n');
        else if (msg.error) { clearTimeout(timer); s.destroy(); reject(new Error(`qmp ${execute}: ${msg.error.desc}`)); }
        else if ('return' in msg && ++answers === 1) s.write(`{"execute":"${execute}"}\n`);
        else if ('return' in msg) { clearTimeout(timer); s.end(); resolve(); }
      }
    });
  });
}

/** The first offset where a and b differ within [0, length), or -1. Reads 4 MiB at a time. */
function firstDifference(a: string, b: string, length: number): number {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(4 * MIB);
  const bb = Buffer.alloc(4 * MIB);
  try {
    for (let off = 0; off < length; off += ba.length) {
      const n = Math.min(ba.length, length - off);
      if (readSync(fa, ba, 0, n, off) !== n || readSync(fb, bb, 0, n, off) !== n) return off;
      if (ba.compare(bb, 0, n, 0, n) !== 0) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return off + i;
      }
    }
    return -1;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Partition 2 (the ext4 root) of a raw MBR disk, copied out sparse for debugfs. */
function rootPartition(raw: string, out: string): string {
  const mbr = Buffer.alloc(512);
  const fd = openSync(raw, 'r');
  readSync(fd, mbr, 0, 512, 0);
  closeSync(fd);
  expect(mbr.readUInt16LE(510)).toBe(0xaa55);
  const p2 = 446 + 16;
  expect(mbr[p2 + 4]).toBe(0x83);
  const startMiB = (mbr.readUInt32LE(p2 + 8) * 512) / MIB;
  const lengthMiB = (mbr.readUInt32LE(p2 + 12) * 512) / MIB;
  execFileSync('dd', [`if=${raw}`, `of=${out}`, 'bs=1M', `skip=${startMiB}`, `count=${lengthMiB}`, 'conv=sparse', 'status=none']);
  return out;
}

/**
 * The mark `name` (after `after`), or a failure as soon as the boot stage reports AGENT-ERROR: a sync that
 * crashes would otherwise retry on every boot until the VM's timeout.
 */
function reach(vm: Vm, name: string, after?: Mark): Promise<Mark> {
  const opts = after ? { after } : undefined;
  const target = vm.waitFor(name, undefined, opts);
  const failed = vm.waitFor('AGENT-ERROR', undefined, opts).then(
    (m) => { throw new Error(`the boot stage failed before ${name}: ${m.text} (serial log ${vm.serialLog})`); },
    () => target, // QEMU exited: the target's own outcome decides
  );
  return Promise.race([target, failed]);
}

const debugfs = (part: string, request: string) =>
  execFileSync('debugfs', ['-R', request, part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('a real OS on the endpoint: Debian 12 with systemd, provisioned over PXE, committed at systemctl poweroff', { timeout: 2_400_000 }, () => {
  let lab: Lab;
  let app: LabAppliance;
  let os: ReturnType<typeof buildArtifacts>;
  let passed = false;

  beforeAll(async () => {
    assertE2ePrerequisites();
    for (const [tool, pkg] of [['debugfs', 'e2fsprogs'], ['mmdebstrap', 'mmdebstrap']] as const) {
      if (spawnSync(tool, ['--version']).error) throw new Error(`${tool} missing: bash scripts/setup-deps.sh (apt-get install ${pkg})`);
    }
    os = buildArtifacts();
    // Its own namespace, same addresses as the other labs (the Debian disk's /etc/deskfuse.conf names 10.91.0.1).
    lab = await createLab({ subnet: '10.91.0.0/24', serverIp: '10.91.0.1', taps: 1, run: `realos-${process.pid}` });
    app = await startLabAppliance(lab, { dhcp: 'full', range: ['10.91.0.100', '10.91.0.200'] });
    const t0 = performance.now();
    await app.cli(['image', 'create', 'debian', '--from', os.disk, '-m', 'Debian 12 (mmdebstrap, systemd)']);
    console.log(`deskfuse image create (${statSync(os.disk).size / MIB} MiB disk): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await app.cli(['desktop', 'create', 'erin', '--image', 'debian']);
    await app.cli(['endpoint', 'add', MAC, '--desktop', 'erin', '--name', 'debian-1']);
  }, 1_500_000);

  afterAll(async () => {
    await app?.stop();
    await lab?.close({ removeLogs: passed });
  });

  it('provisions the Debian disk over PXE, boots it, and commits the file its systemd wrote at a real power-off', async () => {
    const imageSize = statSync(os.disk).size;
    const g = { virtualSize: imageSize, chunkSize: CHUNK };
    // With tracking: room for the fingerprint regions and the era metadata below the state area.
    const room = HOOK ? 2 * fingerprintRegionSize(g) + (ERA ? eraMetadataBytes(g) + 2 * MIB : 0) : 0;
    const diskSize = Math.ceil((imageSize + areaSize(g) + room) / MIB) * MIB + MIB;
    if (HOOK) expect(eraSpace({ areaStart: areaStart(g, diskSize), geometry: g }) !== null).toBe(ERA);
    const disk = path.join(lab.dir, `${MAC.replace(/:/g, '')}.disk`);
    const qmpSocket = path.join(lab.dir, 'qmp.sock');
    const t0 = performance.now();
    const vm: Vm = startVm({
      lab, tap: lab.tapFor(0), firmware: 'bios', mac: MAC, name: 'debian-bios', disk, diskSizeBytes: diskSize,
      memMiB: 1024, timeoutMs: 1_200_000, extraArgs: ['-qmp', `unix:${qmpSocket},server=on,wait=off`],
    });

    // Provisioning: the sync completes, and what it wrote is the source disk, byte for byte. The VM is
    // paused for the comparison, so Debian cannot have written anything yet.
    const synced = await reach(vm, 'SYNCED');
    await qmp(qmpSocket, 'stop');
    const diff = firstDifference(os.disk, disk, imageSize);
    await qmp(qmpSocket, 'cont');
    expect(diff, `the provisioned disk differs from the source at byte ${diff}`).toBe(-1);
    const chunks = Number(/chunks=(\d+)/.exec(synced.text)?.[1]);
    expect(chunks).toBeGreaterThan(1000); // a real OS: thousands of chunks, some of them repeated

    // Debian boots from the disk (iPXE sanboot → syslinux → Linux → systemd), writes its file, powers off.
    const up = await reach(vm, 'REALOS-UP', synced);
    expect(up.text).toMatch(/pid1=systemd commit-unit=active earlier=\[\]/);
    const bootId = /boot_id=([0-9a-f-]{36})/.exec(up.text)?.[1];
    expect(bootId).toBeDefined();
    const wrote = await vm.waitFor('REALOS-WROTE', undefined, { after: up });
    expect(wrote.text).toContain(`file=${MARKER_DIR}/boot-${bootId}`);
    const poweroff: Mark = await vm.waitFor('REALOS-POWEROFF', undefined, { after: wrote });
    // The unit's ExecStop (journald forwards its output to the console) asks the server, which wants a commit.
    const asked = await vm.waitForLine(/deskfuse: the server asks to commit this disk \(52:54:00:91:00:e1\)/);
    expect(asked.t).toBeGreaterThan(poweroff.t);
    // The forced reboot comes back in the boot stage, which commits and powers off.
    const committed = await reach(vm, 'COMMITTED', poweroff);
    if (ERA) {
      // Debian's initramfs put its root behind dm-era (the hook's kernel message), and the commit used it.
      expect((await vm.waitForLine(/deskfuse-era: tracking \/dev\/vda2 as \/dev\/dm-\d+ \(boot 1 of this arming/)).t).toBeLessThan(up.t);
      expect(committed.text).toMatch(/tracking=era/);
    } else if (HOOK) {
      expect((await vm.waitForLine(/deskfuse-era: not armed/)).t).toBeLessThan(up.t);
      expect(committed.text).toMatch(/tracking=full/);
    }
    const exit = await vm.exited;
    const seconds = (performance.now() - t0) / 1000;
    expect(exit.timedOut).toBe(false);
    expect(exit.code).toBe(0);

    const e = await endpoint(app, MAC);
    expect(e).toMatchObject({ state: 'enrolled', desktop: 'erin', disk: 'clean', commitRequested: null });
    const evs = await events(app, MAC);
    const phases = evs.map((x) => x.phase);
    expect(phases).toEqual(expect.arrayContaining(['dhcp', 'script', 'agent', 'synced', 'local', 'poweroff', 'committed']));
    expect(phases.lastIndexOf('poweroff')).toBeGreaterThan(phases.indexOf('local'));
    const version = Number(/version=(\d+)/.exec(committed.text)?.[1]);
    expect(version).toBeGreaterThan(1);
    expect(e.diskVersion).toBe(version);
    const log = await app.cli<{ versions: Array<{ version: number; kind: string }> }>(['image', 'log', 'debian@desktops/erin']);
    expect(log.versions[0]).toMatchObject({ version, kind: 'voi-commit' });

    // The bytes: the committed version's root file system holds the file Debian wrote; version 1 does not.
    const raw = path.join(lab.dir, `v${version}.raw`);
    await app.cli(['image', 'export', `debian@${version}`, '--to', raw]);
    const part = rootPartition(raw, path.join(lab.dir, `v${version}.p2`));
    const file = debugfs(part, `cat ${MARKER_DIR}/boot-${bootId}`);
    expect(file).toContain(`boot_id=${bootId}\n`);
    expect(file).toMatch(/^os=Debian GNU\/Linux 12 \(bookworm\)$/m);
    expect(file).toMatch(/^kernel=\d+\.\d+\.\d+-\d+-amd64$/m);
    const before = rootPartition(os.disk, path.join(lab.dir, 'v1.p2'));
    expect(debugfs(before, `ls ${MARKER_DIR}`)).not.toContain('boot-');
    rmSync(raw);

    rows(vm, evs, seconds);
    console.log(`${synced.text}; ${committed.text}${HOOK ? ` (DESKFUSE_E2E_ERA=${ERA_MODE})` : ''}`);
    passed = true;
  });
});

function rows(vm: Vm, evs: Awaited<ReturnType<typeof events>>, seconds: number): void {
  const tl = timeline(vm, evs);
  const at = (name: string) => tl.rows.find((r) => r.phase === name)?.t.toFixed(1) ?? '–';
  console.log(`\nDebian 12 endpoint (s from QEMU start, TCG):\n${FIGURES_HEADER}\n${fmtFigures('bios provision + Debian', figures(tl))}\n`
    + `Debian up ${at('REALOS-UP')}, wrote its file ${at('REALOS-WROTE')}, systemctl poweroff ${at('REALOS-POWEROFF')}, committed ${at('COMMITTED')}; whole run ${seconds.toFixed(0)} s`);
}
