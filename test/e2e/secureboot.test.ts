// End to end with UEFI Secure Boot on: OVMF's secure-boot build with Microsoft's keys enrolled, PXE by
// OVMF's own (signed) network stack. Our DHCP offers shim (signed by Microsoft), shim loads Debian's signed
// network GRUB from our TFTP, GRUB reads its config from us and boots the boot stage's Debian-signed kernel
// (verified by shim) with our initramfs (not verified: README "Secure Boot"). The agent reports Secure Boot
// and the kernel's lockdown from inside, provisions the real Debian disk (the cached one of realos.test.ts),
// hands off by `kexec -s` (kexec_file_load: the only kexec lockdown allows, for a signed kernel), Debian
// powers off, our unit asks for a commit, the reboot comes back through the same signed chain and commits.
// Then GRUB in the TFTP root is tampered with (one byte): the firmware's chain refuses it.
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { areaSize } from '../../src/agent/state-area.js';
import { assertE2ePrerequisites, createLab, startVm, type Lab, type Mark, type Vm } from './harness/index.js';
import { ROOT, startLabAppliance, type LabAppliance } from './lab-appliance.js';
import { endpoint, events } from './scenario.js';

const MAC = '52:54:00:91:00:5b';
// The Debian disk names this server in /etc/deskfuse.conf (the same cached image as realos.test.ts).
const SERVER_URL = 'http://10.91.0.1:8080';
const CHUNK = 64 * 1024;
const MIB = 1024 * 1024;

interface ImageBoot { partition: number; kernel: string; initrd: string; cmdline: string }

/** The boot stage, the Debian disk (cached by its inputs) and Debian's signed shim and GRUB (cached .debs). */
function buildArtifacts(): { disk: string; boot: ImageBoot; signed: { shim: string; grub: string } } {
  const sh = (cmd: string, args: string[], env: Record<string, string> = {}) =>
    execFileSync(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', timeout: 1_200_000 });
  sh('npm', ['run', '--silent', 'build:initramfs']);
  const dir = sh('bash', ['test/fixtures/realos/build.sh'], { SERVER_URL }).trim().split('\n').pop()!;
  const signed = JSON.parse(sh('bash', ['scripts/secureboot-files.sh']).trim().split('\n').pop()!) as { shim: string; grub: string };
  return { disk: path.join(dir, 'disk.img'), boot: JSON.parse(readFileSync(path.join(dir, 'boot.json'), 'utf8')) as ImageBoot, signed };
}

/** Signers of a PE image's Authenticode signatures (sbverify --list), e.g. "Debian Secure Boot Signer 2022 - linux". */
function signers(file: string): string[] {
  // (sbverify warns on stderr about shim's section padding: not a failure)
  const out = execFileSync('sbverify', ['--list', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return [...out.matchAll(/subject: .*?CN=([^\n]+)/g)].map((m) => m[1]!.trim());
}

/** The mark `name` after `after`, or a failure as soon as the boot stage reports AGENT-ERROR. */
function reach(vm: Vm, name: string, after?: Mark): Promise<Mark> {
  const opts = after ? { after } : undefined;
  const target = vm.waitFor(name, undefined, opts);
  const failed = vm.waitFor('AGENT-ERROR', undefined, opts).then(
    (m) => { throw new Error(`the boot stage failed before ${name}: ${m.text} (serial log ${vm.serialLog})`); },
    () => target,
  );
  return Promise.race([target, failed]);
}

describe('UEFI Secure Boot: shim → signed GRUB → signed kernel + our initramfs, provisions, kexec -s, commits', { timeout: 2_400_000 }, () => {
  let lab: Lab;
  let app: LabAppliance;
  let art: ReturnType<typeof buildArtifacts>;
  // Logs are removed only when every test here passed.
  const passed = { chain: false, tampered: false };

  beforeAll(async () => {
    assertE2ePrerequisites();
    if (!statSync('/usr/bin/sbverify', { throwIfNoEntry: false })) throw new Error('sbverify missing: bash scripts/setup-deps.sh (apt-get install sbsigntool)');
    art = buildArtifacts();
    lab = await createLab({ subnet: '10.91.0.0/24', serverIp: '10.91.0.1', taps: 1, run: `secureboot-${process.pid}` });
    app = await startLabAppliance(lab, { dhcp: 'full', range: ['10.91.0.100', '10.91.0.200'], netboot: { secureBoot: art.signed } });
    const b = art.boot;
    await app.cli(['image', 'create', 'debian', '--from', art.disk, '-m', 'Debian 12 (mmdebstrap, systemd)',
      '--boot-partition', String(b.partition), '--boot-kernel', b.kernel, '--boot-initrd', b.initrd, '--boot-cmdline', b.cmdline]);
    await app.cli(['desktop', 'create', 'sam', '--image', 'debian']);
    await app.cli(['endpoint', 'add', MAC, '--desktop', 'sam', '--name', 'secure-1']);
  }, 1_500_000);

  afterAll(async () => {
    await app?.stop();
    await lab?.close({ removeLogs: passed.chain && passed.tampered });
  });

  it('every binary the firmware and shim check is signed: shim by Microsoft, GRUB and both kernels by Debian', () => {
    expect(signers(art.signed.shim)).toContain('Microsoft Windows UEFI Driver Publisher');
    expect(signers(art.signed.grub)).toContain('Debian Secure Boot Signer 2022 - grub2');
    expect(signers(path.join(ROOT, 'initramfs/out/vmlinuz'))).toContain('Debian Secure Boot Signer 2022 - linux');
    const kernel = path.join(lab.dir, 'debian-vmlinuz');
    execFileSync('mcopy', ['-n', '-i', `${art.disk}@@${MIB}`, `::${art.boot.kernel}`, kernel], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    expect(signers(kernel)).toContain('Debian Secure Boot Signer 2022 - linux');
  });

  it('boots the signed chain with Secure Boot on, provisions, hands off by kexec -s, and commits at power-off', async () => {
    const imageSize = statSync(art.disk).size;
    const diskSize = Math.ceil((imageSize + areaSize({ virtualSize: imageSize, chunkSize: CHUNK })) / MIB) * MIB + MIB;
    const disk = path.join(lab.dir, `${MAC.replace(/:/g, '')}.disk`);
    const vm = startVm({
      lab, tap: lab.tapFor(0), firmware: 'uefi', secureBoot: true, pxe: 'native', mac: MAC, name: 'secure-uefi', disk, diskSizeBytes: diskSize,
      memMiB: 1024, timeoutMs: 1_500_000,
    });

    // A failure stops the VM here: the next test needs its tap.
    try {
      // shim (verified by the firmware) started GRUB (verified by shim), which reads our config.
      const grub = await vm.waitForLine(/deskfuse: syncing this disk/);
      // From inside: the firmware says Secure Boot is on, and Debian's kernel locked itself down.
      const sb = await reach(vm, 'SECUREBOOT');
      expect(sb.text).toMatch(/secureboot=1 lockdown=integrity/);
      const synced = await reach(vm, 'SYNCED', sb);
      // The server's signing key reached the boot stage through the trust initrd GRUB loaded beside it.
      const trust = await reach(vm, 'TRUST');
      expect(trust.text).toMatch(/keys=[0-9a-f]{16}/);
      // Lockdown refuses kexec_load; kexec_file_load accepts Debian's signed kernel.
      const kexec = await reach(vm, 'KEXEC', synced);
      const up = await reach(vm, 'REALOS-UP', kexec);
      expect(up.text).toMatch(/pid1=systemd commit-unit=active/);
      const poweroff = await vm.waitFor('REALOS-POWEROFF', undefined, { after: up });
      // The reboot for the commit comes back through shim and GRUB, with Secure Boot on again.
      const sb2 = await reach(vm, 'SECUREBOOT', poweroff);
      expect(sb2.text).toMatch(/secureboot=1 lockdown=integrity/);
      const committed = await reach(vm, 'COMMITTED', sb2);
      await reach(vm, 'POWEROFF', committed);
      const exit = await vm.exited;
      expect(exit.timedOut).toBe(false);
      expect(exit.code).toBe(0);

      const evs = await events(app, MAC);
      // DHCP offered shim, by TFTP came shim, GRUB, its configs and the boot stage.
      const offered = evs.filter((x) => x.phase === 'dhcp' && x.detail.file);
      expect(offered.map((x) => x.detail.file)).toContain('shimx64.efi');
      const tftp = evs.filter((x) => x.phase === 'tftp' && x.detail.kind === 'done').map((x) => x.detail.file as string);
      for (const f of ['shimx64.efi', 'grubx64.efi', `deskfuse/grub/${MAC}.cfg`, 'deskfuse/stage/vmlinuz', 'deskfuse/stage/initrd.img', 'deskfuse/stage/trust.cpio']) {
        expect(tftp.some((t) => t.replace(/^\//, '') === f), `TFTP sent ${f} (sent: ${tftp.join(', ')})`).toBe(true);
      }
      const scripts = evs.filter((x) => x.phase === 'script');
      expect(scripts.every((x) => x.detail.loader === 'grub' && x.detail.platform === 'efi')).toBe(true);
      const agents = evs.filter((x) => x.phase === 'agent');
      expect(agents.map((x) => x.detail.secureBoot)).toEqual([{ enabled: true, lockdown: 'integrity' }, { enabled: true, lockdown: 'integrity' }]);
      const local = evs.find((x) => x.phase === 'local');
      expect(local?.detail).toMatchObject({ via: 'kexec', syscall: 'kexec_file_load' });
      const e = await endpoint(app, MAC);
      const version = Number(/version=(\d+)/.exec(committed.text)?.[1]);
      expect(version).toBeGreaterThan(1);
      expect(e).toMatchObject({ state: 'enrolled', desktop: 'sam', disk: 'clean', diskVersion: version });
      console.log(`Secure Boot endpoint (s from QEMU start, TCG): GRUB ${grub.t.toFixed(1)}, boot stage ${sb.t.toFixed(1)}, synced ${synced.t.toFixed(1)} (${synced.text}), `
        + `kexec ${kexec.t.toFixed(1)}, Debian up ${up.t.toFixed(1)}, committed ${committed.t.toFixed(1)} (${committed.text})`);
    } finally {
      await vm.kill();
    }
    passed.chain = true;
  });

  it('a GRUB that is not the signed one (one byte changed) is refused by the firmware chain', async () => {
    const grub = path.join(app.dataDir, 'tftp', 'grubx64.efi');
    const fd = openSync(grub, 'r+');
    const b = Buffer.alloc(1);
    const at = Math.floor(statSync(grub).size / 2);
    readSync(fd, b, 0, 1, at);
    writeSync(fd, Buffer.from([b[0]! ^ 0xff]), 0, 1, at);
    closeSync(fd);
    const seq = Math.max(0, ...(await events(app, MAC)).map((x) => x.seq));
    const vm = startVm({
      lab, tap: lab.tapFor(0), firmware: 'uefi', secureBoot: true, pxe: 'native', mac: MAC, name: 'secure-tampered',
      disk: path.join(lab.dir, `${MAC.replace(/:/g, '')}.disk`), memMiB: 1024, timeoutMs: 600_000,
    });
    try {
      // shim checks GRUB against Debian's CA: the changed image fails, shim says so and GRUB never runs.
      const refused = await vm.waitForLine(/Verification failed|Security Violation/i);
      expect(refused.text).toMatch(/Verification failed|Security Violation/i);
      const after = (await events(app, MAC)).filter((x) => x.seq > seq);
      const sent = after.filter((x) => x.phase === 'tftp' && x.detail.kind === 'done').map((x) => String(x.detail.file).replace(/^\//, ''));
      expect(sent).toContain('grubx64.efi');
      expect(sent.some((f) => f.endsWith('grub.cfg') || f.startsWith('deskfuse/'))).toBe(false);
      expect(after.some((x) => x.phase === 'script')).toBe(false);
    } finally {
      await vm.kill();
    }
    passed.tampered = true;
  });
});
