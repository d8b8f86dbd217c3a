import { readFileSync } from 'node:fs';
import { agentCommit, agentHandoff, agentStatus } from '../../src/agent/commands.js';
import type { AgentOptions } from '../../src/agent/session.js';
import { agentSync } from '../../src/agent/sync.js';
import { dfError } from '../../src/errors.js';
import { fmtBytes } from '../../src/progress.js';
import { parseTrustFile } from '../../src/sign/trust.js';
import { need, parseCommand, serverFrom, tokenFrom, trustFrom, type Io } from '../args.js';
import { AGENT } from '../spec.js';
import { emit, fmtTime, plural } from '../output.js';

export async function agentCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(AGENT, args, io);
  if (typeof p === 'number') return p;
  const { sub, values } = p;
  const disk = need(values.disk, '--disk PATH');
  const leaseTtl = values['lease-ttl'];
  if (leaseTtl !== undefined && (!/^\d+$/.test(leaseTtl) || Number(leaseTtl) < 10 || Number(leaseTtl) > 86400)) {
    throw dfError('DF_ERR_USAGE', `--lease-ttl: expected seconds from 10 to 86400, got ${JSON.stringify(leaseTtl)}`, { option: '--lease-ttl' });
  }
  const json = values.json;
  const maxAge = values['max-head-age'];
  if (maxAge !== undefined && (!/^\d+$/.test(maxAge) || Number(maxAge) < 1)) {
    throw dfError('DF_ERR_USAGE', `--max-head-age: expected a number of seconds, got ${JSON.stringify(maxAge)}`, { option: '--max-head-age' });
  }
  const trust = values.trust !== undefined ? parseTrustFile(readTrust(values.trust), values.trust) : undefined;
  const opts = (): AgentOptions => ({
    server: serverFrom(values, io.env),
    tls: trustFrom(values, io.env),
    token: need(tokenFrom(values, io.env, { file: false }), '--token (or DESKFUSE_TOKEN)'),
    disk, force: values.force, reprovision: values.reprovision, progress: values.progress ? 'always' : !json && Boolean(io.err.isTTY),
    ...(values.message !== undefined ? { message: values.message } : {}),
    ...(values.desktop ? { desktop: values.desktop } : {}), ...(values.holder ? { holder: values.holder } : {}),
    ...(leaseTtl !== undefined ? { leaseSeconds: Number(leaseTtl) } : {}), ...(values.scan ? { assumeDirty: true } : {}),
    ...(trust ? { trust } : {}), ...(maxAge !== undefined ? { maxHeadAgeSeconds: Number(maxAge) } : {}),
  });
  switch (sub) {
    case 'sync': {
      const r = await agentSync(opts());
      tookLease(io, json, r.desktop, r.tookLeaseFrom);
      emit(io, json, r, () =>
        `${r.desktop}: ${r.from ?? 'blank'} -> ${r.to}${r.committed ? ` (committed local changes as ${r.committed}${r.conflict ? `, kept as ${r.conflict}` : ''})` : ''}: ` +
        `${plural(r.chunksWritten, 'chunk')} written (${r.chunksPatched} from 4 KiB deltas), ${fmtBytes(r.bytesFetched)} fetched in ${r.requests} requests, ${r.seconds.toFixed(1)} s\n`);
      return 0;
    }
    case 'commit': {
      const r = await agentCommit(opts());
      tookLease(io, json, r.desktop, r.tookLeaseFrom);
      emit(io, json, r, () => !r.committed
        ? r.scanSeconds !== null
          ? `${r.desktop}: nothing to commit: the disk holds version ${r.version} unchanged (scanned${r.unsealed ? ': its file changed since it was sealed' : ''})\n`
          : r.sealCheck === 'mtime'
            ? `${r.desktop}: nothing to commit: the disk was sealed clean at version ${r.version} and its file is unchanged since (agent commit --scan hashes it anyway)\n`
            : `${r.desktop}: nothing committed: the disk was sealed clean at version ${r.version}, so it was not scanned, and changes made to it outside the boot flow ` +
              `are not seen. To commit such changes: deskfuse agent commit --scan (hashes the whole disk); before using the disk outside the boot flow: deskfuse agent handoff\n`
        : r.conflict && r.leaseHeldBy
          ? `${r.desktop}: ${r.leaseHeldBy.holder} holds the desktop's lease (since ${fmtTime(r.leaseHeldBy.since)}), so these changes were not put on its line: ` +
            `they became conflict ref ${r.conflict.conflictRef} (version ${r.version}). Nothing is lost; to continue from them: deskfuse desktop reset ${r.desktop} --to ${r.conflict.conflictRef}\n`
          : r.conflict
            ? `${r.desktop}: version ${r.version} became conflict ref ${r.conflict.conflictRef} (${r.conflict.reason}: the desktop moved to ${r.conflict.head})\n`
            : `${r.desktop}: committed version ${r.version} (parent ${r.parent}), ${r.localChanges} chunks changed, ${fmtBytes(r.bytesUploaded)} uploaded\n`);
      return r.conflict ? 3 : 0;
    }
    case 'status': {
      const r = await agentStatus(disk);
      emit(io, json, r, () => statusText(r as unknown as Status)); // --json: every field as the state area holds it
      return 0;
    }
    case 'handoff': {
      const r = await agentHandoff(disk);
      emit(io, json, r, () => `${disk}: ${r.state} at version ${r.version}\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown agent command ${JSON.stringify(sub)}`);
  }
}

/** A forced take-over is never silent: whose lease it was goes to stderr. */
function tookLease(io: Io, json: boolean, desktop: string, from: { holder: string; fencing: number; since: string } | null): void {
  if (from && !json) io.err.write(`deskfuse: took the lease of desktop ${desktop} from ${from.holder} (fencing ${from.fencing}, since ${fmtTime(from.since)}): its next commit will be kept as a conflict\n`);
}

/** What `agent status` reads from the disk's state area (src/agent/commands.ts agentStatus). */
interface Status {
  disk: string; size: number; state: 'blank' | 'unrecognised' | 'clean' | 'dirty' | 'applying'; note?: string;
  image?: string; desktop?: string; version?: number | null; target?: number | null; progress?: number; lastConflict?: number | null;
  virtualSize?: number; chunkSize?: number; chunkPositions?: number; nonZeroChunks?: number | null;
  stateArea?: { start: number; size: number }; slotOk?: boolean; sequence?: number; endpointSecret?: string;
  lastFailure?: { code: string; errno: string; op: string; at: string; message: string } | null; layout?: string;
}

/** `agent status` for people: what state the disk is in and what the next run does with it. */
function statusText(r: Status): string {
  const lines: string[] = [];
  const what: Record<Status['state'], string> = {
    blank: 'blank: no deskfuse state; agent sync provisions it',
    unrecognised: `holds data but no deskfuse state; ${r.note ?? 'agent sync refuses it unless --reprovision'}`,
    clean: `clean at version ${r.version}: sealed after its last sync or commit; the next sync fetches only what changed`,
    dirty: `dirty since version ${r.version}: the OS may have written to it; the next sync or commit scans it for local changes`,
    applying: `a sync from version ${r.version ?? 'blank'} to ${r.target} was interrupted (${r.progress ?? 0} of ${r.chunkPositions ?? '?'} chunk positions written); the next sync resumes it`,
  };
  lines.push(`${r.disk}: ${r.desktop ? `desktop ${r.desktop} (image ${r.image}), ` : ''}${what[r.state]}`);
  lines.push(`  disk           ${fmtBytes(r.size)}${r.virtualSize !== undefined ? `; the image is ${fmtBytes(r.virtualSize)} in ${fmtBytes(r.chunkSize ?? 0)} chunks (${plural(r.chunkPositions ?? 0, 'position')}${r.nonZeroChunks !== null && r.nonZeroChunks !== undefined ? `, ${r.nonZeroChunks} with data` : ''})` : ''}`);
  if (r.lastConflict) lines.push(`  last conflict  version ${r.lastConflict} was kept as a conflict (deskfuse ref list ${r.image} shows it)`);
  if (r.lastFailure) lines.push(`  last failure   ${r.lastFailure.code}: ${r.lastFailure.op} failed with ${r.lastFailure.errno} at ${fmtTime(r.lastFailure.at, { seconds: true })}: ${r.lastFailure.message}`);
  if (r.stateArea) {
    lines.push(`  state area     ${fmtBytes(r.stateArea.size)} at byte ${r.stateArea.start}; sequence ${r.sequence}; chunk index ${r.slotOk ? 'readable' : 'UNREADABLE (the next sync scans the whole disk)'}`
      + `${r.endpointSecret ? `; secret hash ${r.endpointSecret}` : ''}`);
  }
  if (r.layout === 'legacy' && r.note) lines.push(`  note           ${r.note}`);
  return `${lines.join('\n')}\n`;
}

function readTrust(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw dfError('DF_ERR_USAGE', `--trust: cannot read ${file}: ${(err as Error).message}`, { option: '--trust' }, err);
  }
}
