// proxyDHCP end to end: the site's DHCP server (busybox udhcpd) hands out the addresses, deskfuse in
// proxy mode only answers the PXE/iPXE clients with their boot file; a BIOS endpoint is auto-enrolled
// (config: --auto-enrol DESKTOP), provisioned, boots its OS, and commits at shutdown.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertE2ePrerequisites, createLab, type Lab } from './harness/index.js';
import { startLabAppliance, type LabAppliance } from './lab-appliance.js';
import { buildArtifacts, endpoint, endpointVm, epId, events, figures, FIGURES_HEADER, fmtFigures, publishOs, timeline } from './scenario.js';

const MAC_D = '52:54:00:91:00:0d';

describe('netboot beside another DHCP server (proxyDHCP)', { timeout: 900_000 }, () => {
  let lab: Lab;
  let app: LabAppliance;

  beforeAll(async () => {
    assertE2ePrerequisites();
    const os = buildArtifacts('http://10.91.0.1:8080');
    // Its own namespace, so the same addresses as the first lab (the test OS calls http://10.91.0.1:8080 at shutdown).
    lab = await createLab({ subnet: '10.91.0.0/24', serverIp: '10.91.0.1', taps: 1, run: `proxy-${process.pid}` });
    // The site's DHCP server: hands out addresses, knows nothing of PXE.
    const conf = path.join(lab.dir, 'udhcpd.conf');
    writeFileSync(conf, `start 10.91.0.50\nend 10.91.0.60\ninterface ${lab.bridge().name}\nlease_file ${path.join(lab.dir, 'udhcpd.leases')}\npidfile ${path.join(lab.dir, 'udhcpd.pid')}\nopt subnet 255.255.255.0\n`);
    writeFileSync(path.join(lab.dir, 'udhcpd.leases'), '');
    lab.spawn('busybox', ['udhcpd', '-f', conf], { stdio: 'ignore' });
    app = await startLabAppliance(lab, { dhcp: 'proxy', autoEnrol: 'dave' });
    await publishOs(app, os.disk, os.boot, ['dave']);
  }, 600_000);

  afterAll(async () => {
    await app?.stop();
    await lab?.close();
  });

  it('BIOS: the site DHCP gives the address, our proxyDHCP the boot; auto-enrolled; provisioned; local OS up', async () => {
    const vm = endpointVm(lab, 'D-bios-proxy', 'bios', MAC_D, 0);
    await vm.waitFor('SYNCED');
    const net = vm.lines.find((l) => /NET-UP/.test(l.text));
    expect(net?.text ?? '').toMatch(/10\.91\.0\.(5\d|60)\//); // an address from udhcpd's pool
    await vm.waitFor('OS-BOOTED');
    await vm.waitFor('COMMITTED');
    expect((await vm.exited).code).toBe(0);
    const evs = await events(app, MAC_D);
    expect(evs.map((e) => e.phase)).toEqual(expect.arrayContaining(['dhcp', 'script', 'kernel', 'initrd', 'agent', 'synced', 'local', 'poweroff', 'committed']));
    expect(evs.filter((e) => e.phase === 'dhcp').every((e) => String(e.detail.kind).startsWith('proxy') || e.detail.kind === 'pxe-ack')).toBe(true);
    expect(evs.find((e) => e.phase === 'enrol')?.detail).toMatchObject({ state: 'enrolled', desktop: 'dave' });
    expect((await endpoint(app, MAC_D)).id).toBe(epId(MAC_D));
    const report = `${FIGURES_HEADER}\n${fmtFigures('bios proxyDHCP (D)', figures(timeline(vm, evs)))}\n`;
    writeFileSync(path.join(lab.dir, 'phases.md'), report);
    console.log(`\nPhase timings (s from QEMU start, TCG):\n${report}`);
  });
});
