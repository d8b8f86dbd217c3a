// `npm run demo`: one netboot scenario, narrated for a newcomer. Two QEMU endpoints (BIOS, then UEFI)
// network-boot from deskfuse in a private lab network; the first provisions its blank disk, boots the
// desktop's OS, which writes a file and powers off (commit at shutdown); the second provisions from the
// desktop the first committed and finds that file. Needs root (network namespace); runs ~3–5 minutes.
import { rmSync } from 'node:fs';
import { assertE2ePrerequisites, createLab, type Lab, type Vm } from './harness/index.js';
import { startLabAppliance, type LabAppliance } from './lab-appliance.js';
import { buildArtifacts, endpointVm, figures, FIGURES_HEADER, fmtFigures, publishOs, timeline, events, type PhaseFigures } from './scenario.js';
import type { BootEvent } from '../../src/endpoint/model.js';

const say = (s = '') => process.stdout.write(`${s}\n`);
const step = (s: string) => say(`\n\x1b[1m▸ ${s}\x1b[0m`);

/** Prints the endpoint's boot as it happens: server events and the VM's own marks, seconds since power-on. */
function narrate(app: LabAppliance, vm: Vm): () => void {
  const seen = new Set<number>();
  let marks = 0;
  const timer = setInterval(async () => {
    for (; marks < vm.marks.length; marks++) {
      const m = vm.marks[marks]!;
      if (m.pseudo || !WORDS[m.name]) continue;
      say(`  ${m.t.toFixed(1).padStart(6)} s  ${vm.name}: ${WORDS[m.name]!(m.text)}`);
    }
    try {
      for (const e of await events(app, vm.mac)) {
        if (seen.has(e.seq) || Date.parse(e.at) < vm.startedAt) continue;
        seen.add(e.seq);
        say(`  ${((Date.parse(e.at) - vm.startedAt) / 1000).toFixed(1).padStart(6)} s  server: ${eventText(e)}`);
      }
    } catch { /* the next tick retries */ }
  }, 500);
  return () => clearInterval(timer);
}

/** A mark's text without its name and uptime. */
const rest = (t: string): string => t.replace(/^([A-Z0-9-]+\s+)?uptime=\S+\s*/, '').trim();
const WORDS: Record<string, (t: string) => string> = {
  'AGENT-START': () => 'the boot stage (Linux + Node.js agent) is running',
  SESSION: (t) => `agent got its orders: ${rest(t)}`,
  SYNCED: (t) => `disk synced: ${rest(t)}`,
  'OS-BOOTED': (t) => `the desktop's OS is up (${/via=\S+/.exec(t)?.[0] ?? ''})`,
  'OS-MARKERS': (t) => `files the OS finds in /markers: ${rest(t) || '(none)'}`,
  'OS-MARKER-WRITTEN': (t) => `the OS wrote its marker file: ${rest(t)}`,
  'OS-SHUTDOWN-HOOK': () => 'the OS shuts down; its hook asks deskfuse whether to commit',
  COMMITTED: (t) => `local changes committed: ${rest(t)}`,
  KEXEC: () => "handing over to the image's own kernel (kexec)",
  BOOTNEXT: (t) => `UEFI BootNext set to the disk: ${rest(t)}`,
  POWEROFF: () => 'powering off',
};

function eventText(e: BootEvent): string {
  const d = e.detail as Record<string, unknown>;
  switch (e.phase) {
    case 'dhcp': return `DHCP ${d.kind}${d.ip ? ` ${d.ip}` : ''}${d.file ? ` → ${d.file}` : ''}`;
    case 'enrol': return `new endpoint, ${d.state}`;
    case 'script': return `iPXE script: ${d.decision}${d.action ? ` (${d.action})` : ''} — ${d.reason}`;
    case 'kernel': return 'serving the boot kernel';
    case 'initrd': return `serving the initramfs (${Math.round(Number(d.bytes) / 1048576)} MiB)`;
    case 'agent': return `boot token exchanged; action ${d.action}, then ${d.handoff}`;
    case 'synced': return `synced to version ${d.version} (${d.chunksWritten} chunks, ${(Number(d.bytesFetched) / 1048576).toFixed(1)} MiB fetched)`;
    case 'local': return `the endpoint boots its local disk (${d.via})`;
    case 'poweroff': return 'the OS asked for a commit at shutdown';
    case 'committed': return `committed: version ${d.version}${d.conflict ? ` (kept as ${d.conflict})` : ''}`;
    default: return `${e.phase} ${JSON.stringify(d)}`;
  }
}

async function endpointRun(app: LabAppliance, vm: Vm, approve?: { mac: string; desktop: string; name: string }): Promise<PhaseFigures> {
  const stop = narrate(app, vm);
  try {
    if (approve) {
      for (;;) {
        const ev = await events(app, approve.mac).catch(() => []);
        if (ev.some((e) => e.phase === 'enrol')) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      say(`           admin: deskfuse endpoint approve ${approve.mac} --desktop ${approve.desktop} --name ${approve.name}`);
      await app.cli(['endpoint', 'approve', approve.mac, '--desktop', approve.desktop, '--name', approve.name]);
    }
    await vm.waitFor('COMMITTED');
    const exit = await vm.exited;
    if (exit.code !== 0) throw new Error(`${vm.name} ended with ${JSON.stringify(exit)}; serial log ${vm.serialLog}`);
    await new Promise((r) => setTimeout(r, 700));
  } finally {
    stop();
  }
  return figures(timeline(vm, await events(app, vm.mac)));
}

/**
 * The reference chain of ../shared/notes/pxe-e2e-findings.md §5 (dnsmasq + a 24 MiB payload), seconds.
 * Its "initrd loaded" is when the download ended, ours when it was requested: not compared. Its UEFI
 * "local boot reached" is its OS up (a UKI booted), so it is compared with ours.
 */
const REFERENCE: Record<string, Partial<Record<keyof PhaseFigures, number>>> = {
  'bios-sanboot': { dhcp: 2.3, script: 2.4, kernel: 2.6, agent: 15.0, synced: 20.2, local: 22.7 },
  'uefi-bootnext': { dhcp: 5.4, script: 5.5, kernel: 5.8, agent: 16.8, synced: 22.2, os: 32.5 },
  'uefi-kexec': { dhcp: 5.7, script: 5.7, kernel: 6.1, agent: 16.8, synced: 21.9, os: 34.1 },
  'uefi-nativepxe': { dhcp: 3.4, tftp: 7.2, script: 9.3, kernel: 9.6, agent: 19.9, synced: 24.9, os: 38.8 },
};

/**
 * `--bench` (bench/netboot.sh): endpoints registered ahead (no approval wait), one VM at a time, each
 * scenario's phases against the reference chain's, as a markdown table.
 */
async function bench(): Promise<void> {
  assertE2ePrerequisites();
  const os = buildArtifacts('http://10.91.0.1:8080');
  const lab = await createLab({ subnet: '10.91.0.0/24', serverIp: '10.91.0.1', taps: 4, run: `bench-${process.pid}` });
  let app: LabAppliance | undefined;
  try {
    app = await startLabAppliance(lab, { dhcp: 'full', range: ['10.91.0.100', '10.91.0.200'] });
    await publishOs(app, os.disk, os.boot, ['d1', 'd2', 'd3', 'd4']);
    const runs: Array<[string, string, 'bios' | 'uefi', string, string, string, 'rom' | 'native']> = [
      ['bios-sanboot', 'bench-bios', 'bios', '52:54:00:91:01:01', 'd1', 'auto', 'rom'],
      ['uefi-kexec', 'bench-uefi-kexec', 'uefi', '52:54:00:91:01:02', 'd2', 'auto', 'rom'],
      ['uefi-bootnext', 'bench-uefi-bootnext', 'uefi', '52:54:00:91:01:03', 'd3', 'bootnext', 'rom'],
      ['uefi-nativepxe', 'bench-uefi-native', 'uefi', '52:54:00:91:01:04', 'd4', 'bootnext', 'native'],
    ];
    const lines: string[] = [];
    for (const [i, [ref, name, fw, mac, desktop, method, pxe]] of runs.entries()) {
      await app.cli(['endpoint', 'add', mac, '--desktop', desktop, '--boot-method', method]);
      const vm = endpointVm(lab, name, fw, mac, i, pxe);
      await vm.waitFor('OS-BOOTED');
      await vm.kill();
      const f = figures(timeline(vm, await events(app, mac)));
      const r = REFERENCE[ref]!;
      const cell = (k: keyof PhaseFigures) => {
        const v = f[k];
        const w = r[k];
        return v === null ? '–' : w === undefined ? v.toFixed(1) : `${v.toFixed(1)} (ref ${w.toFixed(1)}, ${(v / w).toFixed(2)}x)`;
      };
      lines.push(`| ${ref} | ${cell('dhcp')} | ${cell('tftp')} | ${cell('script')} | ${cell('kernel')} | ${cell('initrd')} | ${cell('agent')} | ${cell('synced')} | ${cell('local')} | ${cell('os')} |`);
      say(lines.at(-1));
    }
    say(`\n${FIGURES_HEADER}\n${lines.join('\n')}`);
    say('\nSeconds from QEMU start (TCG, one VM at a time); ref = ../shared/notes/pxe-e2e-findings.md §5 (dnsmasq, 24 MiB payload; ours: 10 MiB of a 96 MiB image).');
    say('initrd: requested (the reference times the end of its download: not compared); synced: the agent wrote and verified the disk;');
    say('local: iPXE sanboot served (BIOS; the reference: its MBR ran) / kexec / BootNext reboot; OS up: the test OS printed its first line (the UEFI reference: its UKI booted).');
  } finally {
    await app?.stop();
    await lab.close();
    if (process.env.DESKFUSE_E2E_KEEP !== '1') rmSync(lab.dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (process.argv.includes('--bench')) return bench();
  assertE2ePrerequisites();
  step('Building the boot stage (Debian kernel + busybox + Node.js + the deskfuse agent) and a tiny test OS');
  const os = buildArtifacts('http://10.91.0.1:8080');
  let lab: Lab | undefined;
  let app: LabAppliance | undefined;
  try {
    step('Creating a private lab network (a network namespace with bridge br0, 10.91.0.1/24; nothing leaves it)');
    lab = await createLab({ subnet: '10.91.0.0/24', serverIp: '10.91.0.1', taps: 2, run: `demo-${process.pid}` });
    say(`  namespace ${lab.name}, logs in ${lab.dir}`);
    step('Starting deskfuse on the lab: DHCP (full) + TFTP + HTTP on br0');
    app = await startLabAppliance(lab, { dhcp: 'full', range: ['10.91.0.100', '10.91.0.200'] });
    say(`  ${app.url}  (admin token in ${app.dataDir}/admin.token)`);
    step('Publishing the test OS as image "os" and creating the persistent desktop "alice"');
    await publishOs(app, os.disk, os.boot, ['alice']);
    say('  deskfuse image create os --from disk.img --boot-partition 1 --boot-kernel /vmlinuz …');
    say('  deskfuse desktop create alice --image os');

    step('Powering on endpoint 1 (BIOS, blank disk). It is unknown: it waits until an admin approves it.');
    const a = endpointVm(lab, 'office-pc', 'bios', '52:54:00:91:00:0a', 0);
    const fa = await endpointRun(app, a, { mac: '52:54:00:91:00:0a', desktop: 'alice', name: 'office-pc' });

    step('Powering on endpoint 2 (UEFI, blank disk), also given desktop alice: it gets what endpoint 1 committed');
    const b = endpointVm(lab, 'home-pc', 'uefi', '52:54:00:91:00:0b', 1);
    const fb = await endpointRun(app, b, { mac: '52:54:00:91:00:0b', desktop: 'alice', name: 'home-pc' });
    const seen = b.marks.find((m) => m.name === 'OS-MARKERS')?.text ?? '';

    step('What changed');
    const log = await app.cli<{ versions: Array<{ version: number; kind: string; author: string; message: string }> }>(['image', 'log', 'os@desktops/alice']);
    for (const v of log.versions) say(`  version ${v.version}  ${v.kind.padEnd(10)} ${v.author}  ${v.message}`);
    say(`  endpoint 2's OS found endpoint 1's file: ${seen.includes('52-54-00-91-00-0a') ? 'yes' : 'NO'}`);
    step('Phase timings (seconds since power-on, QEMU under TCG)');
    say(FIGURES_HEADER);
    say(fmtFigures('endpoint 1 (BIOS)', fa));
    say(fmtFigures('endpoint 2 (UEFI)', fb));
    say('\nDone. Everything ran in the lab namespace, which is now removed.');
  } finally {
    await app?.stop();
    await lab?.close();
    if (lab && process.env.DESKFUSE_E2E_KEEP !== '1') rmSync(lab.dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`\ndemo failed: ${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
});
