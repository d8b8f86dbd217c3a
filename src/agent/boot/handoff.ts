import type { Handoff } from '../../endpoint/decide.js';
import type { ImageBoot } from '../../api/schemas.js';

/** What the hand-off does to the machine (src/agent/boot/system.ts in the boot stage). */
export interface Machine {
  isUefi(): boolean;
  /** Mount the image's boot partition and `kexec -l` its kernel (`-s` under lockdown); throws when it cannot. */
  kexecLoad(disk: string, boot: ImageBoot): { syscall: string } | void;
  /** `kexec -e`: returns only by throwing (the jump failed). */
  kexecExec(): never;
  setBootNextToDisk(disk: string): { num: number; description: string };
  reboot(): never;
  powerOff(): never;
}

export type Report = (phase: string, detail?: Record<string, unknown>) => Promise<void>;

export interface HandoffDeps {
  machine: Machine;
  report: Report;
  mark(name: string, extra?: string): void;
  say(text: string): void;
}

const message = (err: unknown): string => {
  const e = err as { code?: string; message?: string };
  return e?.code ? `${e.code}: ${e.message}` : (e?.message ?? String(err));
};

/**
 * Hand the machine to the local OS, recording each step in the order it happened. A kexec is
 * reported as a hand-off only once its kernel is loaded (the jump itself leaves no later moment to
 * report from); when the load or the jump fails, an `error` event with `recovered: true` says so
 * before the fallback (BootNext on UEFI, then a reboot) is reported.
 */
export async function handOff(d: HandoffDeps, how: { handoff: Handoff; imageBoot: ImageBoot | null }, disk: string): Promise<never> {
  const { machine: m, report, mark, say } = d;
  if (how.handoff === 'poweroff') {
    mark('POWEROFF');
    say('done; powering off');
    return m.powerOff();
  }
  if (how.handoff === 'kexec' && how.imageBoot) {
    let stage = 'load';
    try {
      const loaded = m.kexecLoad(disk, how.imageBoot);
      stage = 'exec';
      await report('local', { via: 'kexec', kernel: how.imageBoot.kernel, ...(loaded ? { syscall: loaded.syscall } : {}) });
      mark('KEXEC', how.imageBoot.kernel);
      m.kexecExec();
    } catch (err) {
      const error = message(err);
      await report('error', { action: 'handoff', via: 'kexec', stage, error, recovered: true });
      mark('KEXEC-FAILED', JSON.stringify(error));
      say(`kexec failed (${error}); rebooting into the disk instead`);
    }
  }
  if (m.isUefi()) {
    try {
      const o = m.setBootNextToDisk(disk);
      await report('local', { via: 'bootnext', option: o.num, description: o.description });
      mark('BOOTNEXT', `Boot${o.num.toString(16).toUpperCase().padStart(4, '0')} "${o.description}"`);
    } catch (err) {
      await report('error', { action: 'handoff', via: 'bootnext', error: message(err) });
      say(`cannot set BootNext: ${message(err)}`);
    }
  }
  mark('REBOOT');
  return m.reboot();
}
