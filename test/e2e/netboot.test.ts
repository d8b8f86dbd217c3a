// End to end with QEMU endpoints (TCG) in a lab namespace, our DHCP + TFTP + HTTP, no dnsmasq:
//   1. BIOS, blank disk: PXE → enrol (pending until approved) → provision → reboot → sanboot into the
//      test OS, which writes a marker and asks for a commit at shutdown → reboot → commit → power off
//   2. the same endpoint again, nothing to do: iPXE boots the disk straight away (no boot stage); the
//      power fails while the OS runs; the next boot commits what the OS wrote, then syncs
//   3. UEFI (OVMF), blank disk, another endpoint on the same desktop: provision → kexec into the OS, which
//      has the first endpoint's marker → commit at shutdown
//   4. UEFI through OVMF's own PXE client (DHCP arch 7 → TFTP snponly.efi → iPXE), BootNext as its boot
//      method (own desktop): provision → BootNext → the OS via systemd-boot
// (proxyDHCP beside another DHCP server: netboot-proxy.test.ts)
import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertE2ePrerequisites, createLab, type Lab, type Vm } from './harness/index.js';
import { startLabAppliance, type LabAppliance } from './lab-appliance.js';
import {
  buildArtifacts, endpoint, endpointVm, epId, events, figures, FIGURES_HEADER, fmtFigures, publishOs, timeline, waitEvent, type PhaseFigures,
} from './scenario.js';

const MAC_A = '52:54:00:91:00:0a';
const MAC_B = '52:54:00:91:00:0b';
const MAC_C = '52:54:00:91:00:0c';
const rows: Array<[string, PhaseFigures]> = [];

function markers(vm: Vm): string[] {
  const m = vm.marks.find((x) => x.name === 'OS-MARKERS');
  return (m?.text ?? '').replace(/^OS-MARKERS\s*/, '').replace(/uptime=\S+/, '').trim().split(/\s+/).filter(Boolean);
}

describe('netboot end to end (QEMU endpoints)', { timeout: 1_500_000 }, () => {
  let lab: Lab;
  let app: LabAppliance;
  let os: ReturnType<typeof buildArtifacts>;

  beforeAll(async () => {
    assertE2ePrerequisites();
    os = buildArtifacts('http://10.91.0.1:8080');
    lab = await createLab({ subnet: '10.91.0.0/24', serverIp: '10.91.0.1', taps: 3, run: `netboot-${process.pid}` });
    app = await startLabAppliance(lab, { dhcp: 'full', range: ['10.91.0.100', '10.91.0.200'] });
    await publishOs(app, os.disk, os.boot, ['alice', 'carol']);
  }, 600_000);

  afterAll(async () => {
    if (rows.length) {
      const report = `${FIGURES_HEADER}\n${rows.map(([n, f]) => fmtFigures(n, f)).join('\n')}\n`;
      writeFileSync(path.join(lab.dir, 'phases.md'), report);
      console.log(`\nPhase timings (s from QEMU start, TCG):\n${report}`);
    }
    await app?.stop();
    await lab?.close();
  });

  it('BIOS: first boot of a blank disk → enrol → provision → local OS writes a marker → commit at shutdown', async () => {
    const vm = endpointVm(lab, 'A-bios-1', 'bios', MAC_A, 0);
    // Unknown: pending, the wait screen asks again every 2 s; approve it with a desktop.
    await waitEvent(app, MAC_A, 'enrol', 0, 240_000);
    expect((await endpoint(app, MAC_A)).state).toBe('pending');
    await app.cli(['endpoint', 'approve', MAC_A, '--desktop', 'alice', '--name', 'desk-a']);
    await vm.waitFor('SYNCED');
    // The server's signing key came in the trust initrd iPXE loaded after the boot stage.
    expect((await vm.waitFor('TRUST')).text).toMatch(/keys=[0-9a-f]{16}/);
    await vm.waitFor('OS-BOOTED');
    const written = await vm.waitFor('OS-MARKER-WRITTEN');
    expect(written.text).toContain('52-54-00-91-00-0a count=1');
    await vm.waitFor('COMMITTED');
    const exit = await vm.exited;
    expect(exit.timedOut).toBe(false);
    expect(exit.code).toBe(0);
    const e = await endpoint(app, MAC_A);
    expect(e).toMatchObject({ state: 'enrolled', desktop: 'alice', disk: 'clean', commitRequested: null });
    expect(e.diskVersion).toBeGreaterThan(1); // the commit made a new version of alice
    const evs = await events(app, MAC_A);
    expect(evs.map((x) => x.phase)).toEqual(expect.arrayContaining(['dhcp', 'script', 'kernel', 'initrd', 'agent', 'synced', 'local', 'poweroff', 'committed']));
    rows.push(['bios provision (A)', figures(timeline(vm, evs))]);
  });

  it('BIOS: a boot with nothing to do goes straight to the local disk; after a power loss the next boot commits before it syncs', async () => {
    const seq = Math.max(...(await events(app, MAC_A)).map((e) => e.seq));
    const vm = endpointVm(lab, 'A-bios-2', 'bios', MAC_A, 0, 'rom', { holdBeforeShutdown: true });
    const booted = await vm.waitFor('OS-BOOTED');
    await vm.waitFor('OS-MARKERS');
    expect(markers(vm)).toContain('52-54-00-91-00-0a');
    const between = (await events(app, MAC_A)).filter((e) => e.seq > seq && Date.parse(e.at) <= vm.startedAt + booted.t * 1000);
    expect(between.map((e) => e.phase)).not.toContain('agent');
    expect(between.map((e) => e.phase)).not.toContain('kernel');
    expect(between.find((e) => e.phase === 'local')?.detail).toMatchObject({ via: 'sanboot' });
    rows.push(['bios nothing to do (A)', figures(timeline(vm, between))]);
    // Power loss: the OS wrote its marker (count=2) and is held before its shutdown hook until killed.
    expect((await vm.waitFor('OS-MARKER-WRITTEN')).text).toContain('count=2');
    await vm.waitFor('OS-HOLD');
    await vm.kill();
    expect(vm.marks.map((m) => m.name)).not.toContain('OS-SHUTDOWN-HOOK');
    expect((await endpoint(app, MAC_A)).disk).toBe('in-use');

    const seq2 = Math.max(...(await events(app, MAC_A)).map((e) => e.seq));
    const again = endpointVm(lab, 'A-bios-3', 'bios', MAC_A, 0);
    const synced = await again.waitFor('SYNCED');
    expect(synced.text).toMatch(/committed=\d+/); // the lost power-off's changes, committed before the sync
    const script = (await events(app, MAC_A)).find((e) => e.seq > seq2 && e.phase === 'script');
    expect(script?.detail.reason).toBe('the disk was in use: commit, then sync');
    expect((await again.waitFor('OS-MARKER-WRITTEN')).text).toContain('count=3'); // count=2 survived
    await again.waitFor('COMMITTED');
    expect((await again.exited).code).toBe(0);
  });

  it('UEFI: a second endpoint on the same desktop provisions, kexecs into the OS and has the marker; and BootNext on another', async () => {
    // Registered before their first boot (from an inventory): no wait for approval.
    await app.cli(['endpoint', 'add', MAC_B, '--desktop', 'alice', '--name', 'desk-b']);
    await app.cli(['endpoint', 'add', MAC_C, '--desktop', 'carol', '--name', 'desk-c', '--boot-method', 'bootnext']);
    const b = endpointVm(lab, 'B-uefi', 'uefi', MAC_B, 1);
    // C boots through OVMF's own PXE client: our DHCP (client arch 7) → TFTP snponly.efi → iPXE → HTTP.
    const c = endpointVm(lab, 'C-uefi-bootnext', 'uefi', MAC_C, 2, 'native');

    await b.waitFor('SYNCED');
    // Under UEFI too (the trust initrd is padded to where the kernel looks for the next archive).
    expect((await b.waitFor('TRUST')).text).toMatch(/keys=[0-9a-f]{16}/);
    await b.waitFor('KEXEC');
    const bootedB = await b.waitFor('OS-BOOTED');
    expect(bootedB.text).toContain('via=kexec');
    await b.waitFor('OS-MARKERS');
    expect(markers(b)).toContain('52-54-00-91-00-0a'); // the first endpoint's change, merged at boot
    await b.waitFor('COMMITTED');
    expect((await b.exited).code).toBe(0);

    await c.waitFor('SYNCED');
    const cEvents = await events(app, MAC_C);
    expect(cEvents.find((e) => e.phase === 'dhcp' && e.detail.file === 'snponly.efi')?.detail).toMatchObject({ arch: 7, ipxe: false });
    const tftp = cEvents.filter((e) => e.phase === 'tftp').map((e) => e.detail);
    expect(tftp.at(-1)).toMatchObject({ file: 'snponly.efi', kind: 'done', bytes: statSync('/usr/lib/ipxe/snponly.efi').size });
    expect(tftp.every((d) => d.kind === 'done' || d.kind === 'size-probe')).toBe(true);
    await c.waitFor('BOOTNEXT');
    const bootedC = await c.waitFor('OS-BOOTED');
    expect(bootedC.text).toContain('via=uefi'); // systemd-boot on the disk's ESP, through BootNext
    await c.waitFor('COMMITTED');
    expect((await c.exited).code).toBe(0);

    rows.push(['uefi provision + kexec (B)', figures(timeline(b, await events(app, MAC_B)))]);
    rows.push(['uefi native PXE + TFTP + BootNext (C)', figures(timeline(c, await events(app, MAC_C)))]);
    // Every line landed: alice has A's three commits and B's, carol has C's.
    const log = await app.cli<{ versions: Array<{ version: number; kind: string }> }>(['image', 'log', 'os@desktops/alice']);
    expect(log.versions.filter((v) => v.kind === 'voi-commit').length).toBeGreaterThanOrEqual(4);
  });
});
