import type { BootAction, BootMethod, EndpointRow, Firmware } from './model.js';

/**
 * What one network boot of an endpoint does: a pure function of what the server knows (the
 * endpoint, its desktop's head, whether the image declares a kernel) and the firmware asking.
 * server/routes/boot.ts renders the answer as an iPXE script.
 */
export type BootDecision =
  | { kind: 'pending'; reason: string; reprovision?: true }
  | { kind: 'unassigned'; reason: string }
  | { kind: 'disabled'; reason: string; local: LocalBoot }
  | { kind: 'agent'; action: BootAction; reason: string; handoff: Handoff }
  | { kind: 'local'; reason: string; local: LocalBoot };

/** How iPXE reaches the local disk itself, or `agent`: the boot stage does it (kexec or BootNext). */
export type LocalBoot = 'sanboot' | 'exit' | 'agent';
/** What the agent does when its work is done. */
export type Handoff = 'reboot' | 'kexec' | 'bootnext' | 'poweroff';

export interface DesktopFacts {
  head: number;
  mode: 'persistent' | 'restore';
  /** The image declares a kernel for kexec. */
  kexec: boolean;
}

/** Firmware from iPXE's `${platform}`: `efi` → UEFI, anything else (`pcbios`) → BIOS. */
export const firmwareOf = (platform: string | undefined): Firmware => (platform === 'efi' ? 'uefi' : 'bios');

/** After a failed agent run, boots within this window go to the local disk instead of looping. */
export const FAILURE_BACKOFF_MS = 10 * 60 * 1000;

/**
 * A commit-at-shutdown order is for the reboot that follows it. A boot later than this (the machine
 * lost power on its way down and someone turns it on to work) must not power off: it commits, syncs, boots.
 */
export const COMMIT_WINDOW_MS = 120 * 1000;

export function decideBoot(e: EndpointRow, fw: Firmware, d: DesktopFacts | undefined, now: Date = new Date(), commitWindowMs = COMMIT_WINDOW_MS): BootDecision {
  if (e.state === 'pending') return { kind: 'pending', reason: 'waiting for an admin to approve this endpoint' };
  if (e.state === 'pending-reprovision') return { kind: 'pending', reason: 'the disk did not prove the endpoint secret: waiting for an admin to reprovision this endpoint', reprovision: true };
  if (e.state === 'disabled') return { kind: 'disabled', reason: 'this endpoint is disabled', local: localBoot(e.bootMethod, fw, false) };
  if (!e.desktop || !d) return { kind: 'unassigned', reason: 'no desktop is assigned to this endpoint' };
  if (e.mode === 'local') return { kind: 'local', reason: 'mode local: the disk is never synced', local: localBoot(e.bootMethod, fw, d.kexec) };
  const agent = (action: BootAction, reason: string): BootDecision => ({ kind: 'agent', action, reason, handoff: handoffAfter(action, e.bootMethod, fw, d.kexec) });
  // The boot stage failed a moment ago (it fell back to the local disk and rebooted): don't loop
  // through it again; boot the disk as it is and let a later boot retry.
  const failed = e.lastSync?.result === 'error' && now.getTime() - Date.parse(e.lastSync.at) < FAILURE_BACKOFF_MS;
  if (failed && e.disk !== 'unknown') {
    // UEFI: not through the boot stage again (it is what failed); iPXE's `exit 1` moves on to the next boot option.
    const local = fw === 'uefi' ? 'exit' : localBoot(e.bootMethod, fw, d.kexec);
    const reason = `the last boot-time ${e.lastSync!.action} failed (${e.lastSync!.error ?? 'error'}); booting the disk as it is`;
    return local === 'agent' ? agent('local', reason) : { kind: 'local', reason, local };
  }
  const asked = e.commitRequested ? now.getTime() - Date.parse(e.commitRequested) : null;
  if (asked !== null && asked >= 0 && asked <= commitWindowMs && d.mode === 'persistent' && e.disk !== 'unknown') {
    return agent('commit-poweroff', 'the OS asked for a commit at shutdown');
  }
  if (e.disk === 'unknown') return agent('sync', 'first boot: provision the disk');
  // An order that outlived its shutdown: this boot is a user's, not the shutdown's reboot.
  if (asked !== null && d.mode === 'persistent') {
    return agent('sync', `the OS asked for a commit at shutdown ${Math.round(asked / 1000)} s ago and the machine did not come back for it: commit, then sync`);
  }
  // No bound disk secret yet (an endpoint provisioned before secrets existed, or a provisioning that
  // did not finish): one boot through the boot stage binds it, so the MAC alone stops opening sessions.
  if (e.secret === 'none' || e.secret === 'provisioning') return agent('sync', 'bind the disk secret to this endpoint');
  // The OS ran since the last seal (power loss, or shut down without a commit): commit what it
  // changed before syncing (a restore desktop discards it instead).
  if (e.disk === 'in-use') return agent('sync', d.mode === 'persistent' ? 'the disk was in use: commit, then sync' : 'restore desktop: discard local changes');
  if (e.diskVersion !== d.head) return agent('sync', `the desktop moved from version ${e.diskVersion} to ${d.head}`);
  const local = localBoot(e.bootMethod, fw, d.kexec);
  return local === 'agent'
    ? agent('local', `up to date at version ${d.head}`)
    : { kind: 'local', reason: `up to date at version ${d.head}`, local };
}

/**
 * iPXE can boot a BIOS disk itself (`sanboot`, `exit`); on UEFI its `exit` falls through to the
 * firmware's next network option or setup (pxe-e2e-findings §6), so the boot stage does it.
 */
export function localBoot(method: BootMethod, fw: Firmware, kexec: boolean): LocalBoot {
  if (fw === 'uefi') return 'agent';
  if (method === 'exit') return 'exit';
  if (method === 'kexec' && kexec) return 'agent';
  return 'sanboot';
}

export function handoffAfter(action: BootAction, method: BootMethod, fw: Firmware, kexec: boolean): Handoff {
  if (action === 'commit-poweroff') return 'poweroff';
  if (kexec && (method === 'kexec' || (method === 'auto' && fw === 'uefi'))) return 'kexec';
  // BIOS: reboot; the next boot finds nothing to do and iPXE boots the disk (sanboot or exit).
  return fw === 'uefi' ? 'bootnext' : 'reboot';
}
