import { agentCommit, agentHandoff, agentStatus } from '../../src/agent/commands.js';
import type { AgentOptions } from '../../src/agent/session.js';
import { agentSync } from '../../src/agent/sync.js';
import { dfError } from '../../src/errors.js';
import { fmtBytes } from '../../src/progress.js';
import { DEFAULT_SERVER, need, parse, type Io } from '../args.js';
import { emit } from '../output.js';

const HELP = `deskfuse agent sync   --disk PATH --desktop NAME [--server URL --token T] [--force] [--reprovision] [--lease-ttl S]
deskfuse agent commit --disk PATH [--server URL --token T] [-m MESSAGE] [--force] [--scan] [--progress]
deskfuse agent status --disk PATH
deskfuse agent handoff --disk PATH     (mark the disk in use by the OS: the next boot scans it)
  --token: the desktop's token (deskfuse desktop token NAME) or an admin token
  --force: take the desktop's lease from another holder, named on stderr (its later commit becomes a
           conflict). Without it, a commit while another holds the lease is kept as a conflict version
  --reprovision: overwrite a disk that belongs to another image or desktop
  -m MESSAGE: the message of the version a commit makes (image log shows it); agent sync takes it too
  --progress: the progress line on stderr also when it is not a terminal (default: only on a terminal)
  --scan: hash the whole disk even when it is sealed clean (a disk file written since its seal is
          scanned anyway: its mtime moved; a block device's writes leave no such trace)
  --lease-ttl SECONDS: how long the desktop's lease lasts unless renewed (default 300; 10-86400). The
           agent renews it while it runs; after a sync, the endpoint's OS renews it (POST /boot/keepalive,
           initramfs/os-integration), so a dead endpoint frees the desktop within this time
`;

export async function agentCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  const { values } = parse(rest, {
    disk: { type: 'string' },
    desktop: { type: 'string' },
    force: { type: 'boolean', default: false },
    reprovision: { type: 'boolean', default: false },
    holder: { type: 'string' },
    'lease-ttl': { type: 'string' },
    scan: { type: 'boolean', default: false },
    message: { type: 'string', short: 'm' },
    progress: { type: 'boolean', default: false },
  });
  if (values.help || !sub) {
    io.out.write(HELP);
    return sub ? 0 : 2;
  }
  const disk = need(values.disk, '--disk PATH');
  const leaseTtl = values['lease-ttl'];
  if (leaseTtl !== undefined && (!/^\d+$/.test(leaseTtl) || Number(leaseTtl) < 10 || Number(leaseTtl) > 86400)) {
    throw dfError('DF_ERR_USAGE', `--lease-ttl: expected seconds from 10 to 86400, got ${JSON.stringify(leaseTtl)}`, { option: '--lease-ttl' });
  }
  const json = values.json;
  const opts = (): AgentOptions => ({
    server: values.server ?? io.env.DESKFUSE_SERVER ?? DEFAULT_SERVER,
    token: need(values.token ?? io.env.DESKFUSE_TOKEN, '--token (or DESKFUSE_TOKEN)'),
    disk, force: values.force, reprovision: values.reprovision, progress: values.progress ? 'always' : !json && Boolean(io.err.isTTY),
    ...(values.message !== undefined ? { message: values.message } : {}),
    ...(values.desktop ? { desktop: values.desktop } : {}), ...(values.holder ? { holder: values.holder } : {}),
    ...(leaseTtl !== undefined ? { leaseSeconds: Number(leaseTtl) } : {}), ...(values.scan ? { assumeDirty: true } : {}),
  });
  switch (sub) {
    case 'sync': {
      const r = await agentSync(opts());
      tookLease(io, json, r.desktop, r.tookLeaseFrom);
      emit(io, json, r, () =>
        `${r.desktop}: ${r.from ?? 'blank'} -> ${r.to}${r.committed ? ` (committed local changes as ${r.committed}${r.conflict ? `, kept as ${r.conflict}` : ''})` : ''}: ` +
        `${r.chunksWritten} chunks written (${r.chunksPatched} from 4 KiB deltas), ${fmtBytes(r.bytesFetched)} fetched in ${r.requests} requests, ${r.seconds.toFixed(1)} s\n`);
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
          ? `${r.desktop}: ${r.leaseHeldBy.holder} holds the desktop's lease (since ${r.leaseHeldBy.since}), so these changes were not put on its line: ` +
            `they became conflict ref ${r.conflict.conflictRef} (version ${r.version}). Nothing is lost; to continue from them: deskfuse desktop reset ${r.desktop} --to ${r.conflict.conflictRef}\n`
          : r.conflict
            ? `${r.desktop}: version ${r.version} became conflict ref ${r.conflict.conflictRef} (${r.conflict.reason}: the desktop moved to ${r.conflict.head})\n`
            : `${r.desktop}: committed version ${r.version} (parent ${r.parent}), ${r.localChanges} chunks changed, ${fmtBytes(r.bytesUploaded)} uploaded\n`);
      return r.conflict ? 3 : 0;
    }
    case 'status': {
      const r = await agentStatus(disk);
      emit(io, json, r, () => Object.entries(r).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join('\n') + '\n');
      return 0;
    }
    case 'handoff': {
      const r = await agentHandoff(disk);
      emit(io, json, r, () => `${disk}: ${r.state} at version ${r.version}\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown agent command ${JSON.stringify(sub)}\n${HELP}`);
  }
}

/** A forced take-over is never silent: whose lease it was goes to stderr. */
function tookLease(io: Io, json: boolean, desktop: string, from: { holder: string; fencing: number; since: string } | null): void {
  if (from && !json) io.err.write(`deskfuse: took the lease of desktop ${desktop} from ${from.holder} (fencing ${from.fencing}, since ${from.since}): its next commit will be kept as a conflict\n`);
}
