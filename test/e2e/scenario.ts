// What the netboot end-to-end scenarios share: building the boot stage and the test OS, the lab
// appliance with the OS image published, endpoint VMs and their timelines (serial marks + server events).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { areaSize } from '../../src/agent/state-area.js';
import type { BootEvent, EndpointRow } from '../../src/endpoint/model.js';
import { buildTimelines, startVm, type Lab, type ServerEvent, type Timeline, type Vm } from './harness/index.js';
import { ROOT, type LabAppliance } from './lab-appliance.js';

export const OS_SIZE = 96 * 1024 * 1024;
export const CHUNK = 64 * 1024;
/** An endpoint disk: the image plus the agent's state area, rounded up to a MiB. */
export const DISK_SIZE = Math.ceil((OS_SIZE + areaSize({ virtualSize: OS_SIZE, chunkSize: CHUNK })) / 1048576) * 1048576 + 1048576;

/** Builds (or finds cached) the boot stage and the test OS image; returns the OS image and its boot.json. */
export function buildArtifacts(serverUrl: string): { disk: string; boot: { partition: number; kernel: string; initrd: string; cmdline: string } } {
  const sh = (cmd: string, args: string[], env: Record<string, string> = {}) =>
    execFileSync(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  sh('npm', ['run', '--silent', 'build:initramfs']);
  if (!existsSync(path.join(ROOT, 'initramfs/out/initrd.img'))) throw new Error('npm run build:initramfs made no initramfs/out/initrd.img');
  const dir = sh('bash', ['test/fixtures/os/build.sh'], { SERVER_URL: serverUrl }).trim().split('\n').pop()!;
  return { disk: path.join(dir, 'disk.img'), boot: JSON.parse(readFileSync(path.join(dir, 'boot.json'), 'utf8')) };
}

/** Publishes the test OS as image `os` (declaring its kernel for kexec) and creates the desktops. */
export async function publishOs(app: LabAppliance, disk: string, boot: { partition: number; kernel: string; initrd: string; cmdline: string }, desktops: string[]): Promise<void> {
  await app.cli(['image', 'create', 'os', '--from', disk, '-m', 'test OS',
    '--boot-partition', String(boot.partition), '--boot-kernel', boot.kernel, '--boot-initrd', boot.initrd, '--boot-cmdline', boot.cmdline]);
  for (const d of desktops) await app.cli(['desktop', 'create', d, '--image', 'os']);
}

export const epId = (mac: string) => `ep-${mac.replace(/:/g, '')}`;

export async function events(app: LabAppliance, mac?: string): Promise<BootEvent[]> {
  return (await app.cli<{ events: BootEvent[] }>(['endpoint', 'events', ...(mac ? [mac] : [])])).events;
}

/** Waits for a server event of `phase` for `mac` with seq > after. */
export async function waitEvent(app: LabAppliance, mac: string, phase: string, after = 0, timeoutMs = 300_000): Promise<BootEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = (await events(app, mac)).find((x) => x.phase === phase && x.seq > after);
    if (e) return e;
    if (Date.now() > deadline) throw new Error(`no ${phase} event for ${mac} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

export async function endpoint(app: LabAppliance, mac: string): Promise<EndpointRow> {
  return app.cli<EndpointRow>(['endpoint', 'show', mac]);
}

/**
 * A QEMU endpoint with network boot first; its disk is <lab>/<MAC>.disk, so each machine keeps its disk across
 * boots. pxe 'rom': the NIC ROM's iPXE; 'native' (UEFI): OVMF's own PXE client, which loads iPXE by TFTP.
 */
export function endpointVm(lab: Lab, name: string, firmware: 'bios' | 'uefi', mac: string, tapIndex: number, pxe: 'rom' | 'native' = 'rom', o: { holdBeforeShutdown?: boolean } = {}): Vm {
  return startVm({
    lab, tap: lab.tapFor(tapIndex), firmware, pxe, mac, name, disk: path.join(lab.dir, `${mac.replace(/:/g, '')}.disk`),
    diskSizeBytes: DISK_SIZE, timeoutMs: 600_000, memMiB: 1024,
    // The test OS stops at OS-HOLD before its shutdown hook (test/fixtures/os/init) until the test kills it.
    ...(o.holdBeforeShutdown ? { extraArgs: ['-fw_cfg', 'name=opt/deskfuse/hold,string=power-loss'] } : {}),
  });
}

/** Server events as the timeline wants them. */
export function serverEvents(evs: BootEvent[]): ServerEvent[] {
  return evs.map((e) => ({ t: Date.parse(e.at), phase: `srv:${e.phase}`, mac: e.mac, detail: JSON.stringify(e.detail) }));
}

/** The phases the findings measured for the reference chain, from one VM's timeline. */
export interface PhaseFigures {
  dhcp: number | null;
  tftp: number | null;
  script: number | null;
  kernel: number | null;
  initrd: number | null;
  agent: number | null;
  synced: number | null;
  local: number | null;
  os: number | null;
}

export function figures(tl: Timeline): PhaseFigures {
  const first = (p: string, after = -Infinity) => tl.rows.find((r) => r.phase === p && r.t >= after)?.t ?? null;
  const synced = first('SYNCED') ?? first('COMMITTED');
  const os = first('OS-BOOTED');
  // "Local boot reached": iPXE handed over to the disk (sanboot served), or the agent's kexec/BootNext reboot.
  const local = first('srv:local', synced ?? -Infinity) ?? first('KEXEC') ?? first('BOOTNEXT');
  return {
    dhcp: first('srv:dhcp'), tftp: tl.rows.find((r) => r.phase === 'srv:tftp' && r.detail.includes('"done"'))?.t ?? null, script: first('srv:script'), kernel: first('srv:kernel'), initrd: first('srv:initrd'),
    agent: first('AGENT-START'), synced, local, os,
  };
}

export function timeline(vm: Vm, evs: BootEvent[]): Timeline {
  return buildTimelines([vm], serverEvents(evs))[0]!;
}

export function fmtFigures(name: string, f: PhaseFigures): string {
  const s = (x: number | null) => (x === null ? '–' : x.toFixed(1));
  return `| ${name} | ${s(f.dhcp)} | ${s(f.tftp)} | ${s(f.script)} | ${s(f.kernel)} | ${s(f.initrd)} | ${s(f.agent)} | ${s(f.synced)} | ${s(f.local)} | ${s(f.os)} |`;
}
export const FIGURES_HEADER = '| scenario | DHCP | TFTP | script | kernel | initrd | agent started | synced/committed | local boot | OS up |\n|---|---|---|---|---|---|---|---|---|---|';
