import { scanDisk, type ScanResult } from '../sync/scan.js';
import { changedPositions } from './era/arm.js';
import type { Session } from './session.js';

export interface LocalScan extends ScanResult {
  /** 'era': only what the OS's dm-era tracking marked (and what it does not cover) was read; else why everything was. */
  tracking: string;
}

/**
 * The disk's local changes against its slot: a scan of the chunks the OS's changed-block tracking
 * says were written (src/agent/era/arm.ts), or of every chunk when that tracking is absent or
 * cannot be trusted. `fingerprints`: the slot's, when the desktop trusts them (persistent).
 */
export async function scanLocalChanges(s: Session, fingerprints: Buffer | null): Promise<LocalScan> {
  const slot = s.slot;
  // Restore desktops get no shortcut, as with fingerprints: their reset must undo whatever was done.
  const t = s.state && slot && s.desktop.mode === 'persistent'
    ? await changedPositions(s.disk.fh, s.disk.size, s.state)
    : { read: null, reason: s.desktop.mode === 'persistent' ? 'no state' : 'restore mode' };
  const scan = await scanDisk(s.disk.path, s.geometry, null, slot?.index ?? null, undefined, undefined, s.disk.view, fingerprints, t.read);
  return { ...scan, tracking: t.read ? 'era' : `full scan: ${t.reason}` };
}
