import { keyIdOf } from '../sign/ed25519.js';
import { hashBytes } from '../chunk/id.js';
import { dfError, isDeskfuseError } from '../errors.js';
import { isBlankSecret } from '../endpoint/proof.js';
import { chunkCount } from '../image/geometry.js';
import { commitChanges, mergeHints, type CommitOutcome } from './commit.js';
import { stopOnDiskFailure } from './disk-failure.js';
import { hasDataOutside, openDisk } from './disk.js';
import { armTracking, disarmTracking } from './era/arm.js';
import { scanLocalChanges } from './local-scan.js';
import { keepLease, openSession, releaseLease, takeLease, type AgentOptions, type Lease, type Session } from './session.js';
import { adoptLegacyState, areaSize, readLegacyState, readSlot, readState, writeHeader, writeSlotAndHeader } from './state-area.js';

export interface CommitResult extends Partial<CommitOutcome> {
  desktop: string;
  version: number;
  parent: number | null;
  conflict: CommitOutcome['conflict'];
  ref: string;
  committed: boolean;
  localChanges: number;
  scanSeconds: number | null;
  bytesUploaded: number;
  requests: number;
  seconds: number;
  /** Another holder had the lease, so the commit was kept as a conflict and the desktop's line left alone. */
  leaseHeldBy: { holder: string; since: string } | null;
  /** The live lease `force` took over (its holder's next commit becomes a conflict). */
  tookLeaseFrom: { holder: string; fencing: number; since: string } | null;
  /** The disk said clean, but its file changed since it was sealed: it was scanned. */
  unsealed: boolean;
  /** How a clean disk is known to be unchanged: its file's mtime against its seal, or not at all (a block device, an old seal). */
  sealCheck: 'mtime' | 'none';
  /** How the local changes were found: 'era' (the OS's changed-block tracking) or why the whole disk was scanned (null: not scanned). */
  tracking?: string | null;
  /** Bytes the scan read from the disk (0: not scanned). */
  bytesScanned?: number;
}

/** The desktop a disk belongs to, from its state area (no server needed). */
async function diskDesktop(path: string): Promise<string> {
  const d = await openDisk(path, false);
  try {
    const st = (await readState(d.fh, d.size)) ?? (await readLegacyState(d.fh, d.size));
    if (!st) throw dfError('DF_ERR_DISK_BLANK', `${path} has no deskfuse state area: run agent sync first`, { disk: path });
    return st.desktop;
  } finally {
    await d.close();
  }
}

/**
 * `deskfuse agent commit`: find the disk's local changes (a scan against the on-disk version),
 * upload what the server lacks, commit, seal the disk `clean` and release the lease.
 */
export async function agentCommit(o: AgentOptions): Promise<CommitResult> {
  return stopOnDiskFailure(o.disk, () => commitDisk(o));
}

async function commitDisk(o: AgentOptions): Promise<CommitResult> {
  const t0 = performance.now();
  const s = await openSession(o, o.desktop ?? (await diskDesktop(o.disk)));
  try {
    let state = s.state;
    if (!state || !s.slot) throw dfError('DF_ERR_DISK_BLANK', `${o.disk} has no deskfuse state area: run agent sync first`, { disk: o.disk });
    if (state.state === 'applying') throw dfError('DF_ERR_APPLY_PENDING', `${o.disk} was being synced to version ${state.target} when it stopped: run agent sync to finish first`, { target: state.target });
    if (s.desktop.mode === 'restore') throw dfError('DF_ERR_RESTORE_MODE', `desktop ${s.desktop.name} is in restore mode: its local changes are discarded at the next sync, never committed`, { desktop: s.desktop.name });
    const { lease, heldBy } = await leaseForCommit(s, o.force ?? false);
    const base = {
      desktop: s.desktop.name, ref: s.desktop.ref ?? `desktops/${s.desktop.name}`, conflict: null, parent: state.version,
      leaseHeldBy: heldBy, tookLeaseFrom: lease.takenFrom ?? null,
      unsealed: s.unsealed, sealCheck: (state.sealedAt != null && s.disk.mtimeMs !== null) || s.unsealed ? 'mtime' as const : 'none' as const,
    };
    let result: CommitResult;
    const stop = heldBy ? null : keepLease(s);
    try {
      if (state.state === 'clean') {
        result = { ...base, version: state.version!, committed: false, localChanges: 0, scanSeconds: null, bytesUploaded: 0, requests: 0, seconds: 0 };
      } else {
        const scan = await scanLocalChanges(s, s.slot.fingerprints ?? null);
        const hints = mergeHints(scan, s.slot.hints);
        if (scan.changed.length === 0) {
          // No change: the slot stands; written again only to record fingerprints it lacked.
          state = s.slot.fingerprints
            ? await writeHeader(s.disk.fh, s.disk.size, { ...state, state: 'clean', failure: null })
            : await writeSlotAndHeader(s.disk.fh, s.disk.size, { ...state, state: 'clean', failure: null }, { ...s.slot, fingerprints: scan.fingerprints });
          result = { ...base, version: state.version!, committed: false, localChanges: 0, scanSeconds: scan.seconds, tracking: scan.tracking, bytesScanned: scan.bytesRead, bytesUploaded: 0, requests: 0, seconds: 0 };
        } else {
          const c = await commitChanges(s, state, lease, scan, hints);
          result = { ...base, ...c.outcome, committed: true, localChanges: scan.changed.length, scanSeconds: scan.seconds, tracking: scan.tracking, bytesScanned: scan.bytesRead, bytesUploaded: 0, requests: 0, seconds: 0 };
        }
      }
    } finally {
      await stop?.();
    }
    if (!heldBy) await releaseLease(s, lease);
    return { ...result, bytesUploaded: s.client.stats.bytesSent, requests: s.client.stats.requests, seconds: (performance.now() - t0) / 1000 };
  } finally {
    await s.disk.close();
  }
}

/**
 * The lease a commit runs under. Held by another (this endpoint was displaced: its lease was taken
 * over, or it expired and someone took it): the commit goes on without one (fencing 0), so the
 * server keeps it as a conflict version and the other holder's line is never touched. Only `force`
 * takes the lease, and the result names whose it was.
 */
async function leaseForCommit(s: Session, force: boolean): Promise<{ lease: Lease; heldBy: { holder: string; since: string } | null }> {
  try {
    return { lease: await takeLease(s, force), heldBy: null };
  } catch (err) {
    if (force || !isDeskfuseError(err, 'DF_ERR_LEASE_HELD')) throw err;
    return { lease: { holder: s.holder, fencing: 0 }, heldBy: { holder: String(err.fields.holder), since: String(err.fields.since) } };
  }
}

/**
 * `deskfuse agent handoff`: the OS is about to run on the disk; the next boot must scan it.
 * `armTrackingNow`: this run has just brought the disk to its slot (a sync), so the OS's changed-block
 * tracking may start from it; any other hand-off (no server, a disk left as it was) disarms it.
 */
export async function agentHandoff(path: string, armTrackingNow = false): Promise<{ disk: string; state: string; version: number | null; tracking: boolean }> {
  const d = await openDisk(path, true);
  try {
    await adoptLegacyState(d.fh, d.size);
    const st = await readState(d.fh, d.size);
    if (!st) throw dfError('DF_ERR_DISK_BLANK', `${path} has no deskfuse state area: run agent sync first`, { disk: path });
    if (st.state === 'applying') throw dfError('DF_ERR_APPLY_PENDING', `${path} is half-synced to version ${st.target}; it must not boot: run agent sync`, { target: st.target });
    // The OS's changed-block tracking is armed only over a disk that holds exactly its slot (clean):
    // a dirty disk's earlier changes are in no era metadata, so it stays disarmed (a full scan).
    const armed = armTrackingNow && st.state === 'clean' ? await armTracking(d.fh, d.size, st, d.sectorSize) : (await disarmTracking(d.fh, d.size), false);
    const next = st.state === 'dirty' ? st : await writeHeader(d.fh, d.size, { ...st, state: 'dirty' });
    return { disk: path, state: next.state, version: next.version, tracking: armed };
  } finally {
    await d.close();
  }
}

/** The endpoint secret the disk's state area holds (null: blank, torn beyond repair or not ours). */
export async function diskSecret(path: string): Promise<Buffer | null> {
  const d = await openDisk(path, false);
  try {
    const st = (await readState(d.fh, d.size)) ?? (await readLegacyState(d.fh, d.size));
    return st && !isBlankSecret(st.secret) ? st.secret : null;
  } finally {
    await d.close();
  }
}

/** `deskfuse agent status`: what the state area says (no server needed). */
export async function agentStatus(path: string): Promise<Record<string, unknown>> {
  const d = await openDisk(path, false);
  try {
    const current = await readState(d.fh, d.size);
    const st = current ?? (await readLegacyState(d.fh, d.size));
    // No state: blank, or data deskfuse does not know (a state area some tool overwrote): never "blank" then.
    if (!st) return (await hasDataOutside(d, 0)) ? { disk: path, size: d.size, state: 'unrecognised', note: 'the disk holds data but no deskfuse state: agent sync refuses it (DF_ERR_DISK_UNKNOWN_DATA) unless reprovisioned' } : { disk: path, size: d.size, state: 'blank' };
    let slotOk = true;
    let chunks: number | null = null;
    try {
      const slot = await readSlot(d.fh, st);
      chunks = slot.index.nonZeroCount();
    } catch {
      slotOk = false;
    }
    return {
      disk: path, size: d.size, state: st.state, image: st.image, desktop: st.desktop, version: st.version, target: st.target,
      progress: st.state === 'applying' ? st.progress : undefined, lastConflict: st.lastConflict, virtualSize: st.geometry.virtualSize,
      chunkSize: st.geometry.chunkSize, chunkPositions: chunkCount(st.geometry), nonZeroChunks: chunks, stateArea: { start: st.areaStart, size: areaSize(st.geometry) },
      slotOk, sequence: st.seq, endpointSecret: hashBytes(st.secret).toString('hex').slice(0, 16), lastFailure: st.failure ?? null,
      // Signed versions (src/agent/signed.ts): the keys the disk trusts, and the version below which a sync needs a signed rollback.
      trustedKeys: (st.trustKeys ?? []).map((k) => keyIdOf(k)), versionFloor: st.floor ?? null,
      ...(current ? {} : { layout: 'legacy', note: 'state area of an older release (headers at the very end): moved before the backup GPT at the next sync or commit' }),
    };
  } finally {
    await d.close();
  }
}

