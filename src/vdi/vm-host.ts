import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { dfError } from '../errors.js';
import type { OvmfFiles } from './launch.js';

/**
 * What `vdi start` keeps on the hypervisor host for a desktop's VMs, in STATE/DESKTOP/:
 *   OVMF_VARS.fd, OVMF_VARS.secboot.fd   the UEFI variable store (boot entries, Secure Boot keys), one per
 *                                        firmware build, made from its template the first time
 *   tpm/                                 swtpm's TPM 2.0 state (keys the OS sealed, BitLocker's among them)
 *   lock                                 the PID of the `vdi start` using them
 * The disk itself is never here: it is the session's NBD export.
 */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DESKFUSE_VDI_STATE_DIR) return env.DESKFUSE_VDI_STATE_DIR;
  if (process.getuid?.() === 0) return '/var/lib/deskfuse/vdi';
  return path.join(env.XDG_STATE_HOME || path.join(homedir(), '.local/state'), 'deskfuse/vdi');
}

export interface DesktopState {
  /** The desktop's folder, or a throw-away copy of it when another `vdi start` on this host holds it. */
  dir: string;
  /** True when `dir` is a copy: what this VM changes in its NVRAM or TPM is dropped at the end. */
  ephemeral: boolean;
  /** This VM's variable store (UEFI), made from the template if the desktop had none. */
  vars: string | null;
  /** swtpm's state folder (with `tpm`). */
  tpmDir: string | null;
  release(): void;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * Takes STATE/DESKTOP for this run (a lock file holding our PID; a lock whose PID is gone is stale and
 * taken over). Held by a live `vdi start` (a restore desktop's second session, a --force over a
 * running VM): this VM runs on a copy, discarded when it ends, so two VMs never share one store.
 */
export function openDesktopState(stateDir: string, desktop: string, o: { ovmf: OvmfFiles | null; secureBoot: boolean; tpm: boolean }): DesktopState {
  const own = path.join(stateDir, desktop);
  try {
    mkdirSync(own, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw dfError('DF_ERR_CONFIG', `--state-dir: cannot create ${own}: ${(e as Error).message}`, { option: '--state-dir', path: own }, e);
  }
  const lock = path.join(own, 'lock');
  let held = false;
  for (let i = 0; i < 2 && !held; i++) {
    try {
      writeFileSync(lock, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      held = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(readFileSync(lock, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && alive(pid)) break;
      rmSync(lock, { force: true }); // stale: its process is gone
    }
  }
  let dir = own;
  if (!held) {
    dir = mkdtempSync(path.join(tmpdir(), `deskfuse-vdi-${desktop}-`));
    for (const f of ['OVMF_VARS.fd', 'OVMF_VARS.secboot.fd']) if (existsSync(path.join(own, f))) copyFileSync(path.join(own, f), path.join(dir, f));
    if (existsSync(path.join(own, 'tpm'))) cpSync(path.join(own, 'tpm'), path.join(dir, 'tpm'), { recursive: true, filter: (src) => path.basename(src) !== '.lock' });
  }
  let vars: string | null = null;
  if (o.ovmf) {
    vars = path.join(dir, o.secureBoot ? 'OVMF_VARS.secboot.fd' : 'OVMF_VARS.fd');
    if (!existsSync(vars)) {
      // Whole or not at all: a copy cut short would be a corrupt store that OVMF reformats.
      copyFileSync(o.ovmf.vars, `${vars}.tmp`);
      chmodSync(`${vars}.tmp`, 0o600); // the template may be read-only; the copy is this desktop's to write
      renameSync(`${vars}.tmp`, vars);
    }
  }
  let tpmDir: string | null = null;
  if (o.tpm) {
    tpmDir = path.join(dir, 'tpm');
    mkdirSync(tpmDir, { recursive: true, mode: 0o700 });
  }
  return {
    dir, ephemeral: !held, vars, tpmDir,
    release: () => {
      if (held) {
        try {
          if (Number(readFileSync(lock, 'utf8').trim()) === process.pid) rmSync(lock, { force: true });
        } catch {
          /* gone already */
        }
      } else {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

export interface Swtpm {
  /** The control socket QEMU's `-chardev socket,path=` connects to. */
  socket: string;
  pid: number;
  /** Waits for swtpm to end (it does when QEMU closes its connection), else stops it by its PID. */
  stop(): Promise<void>;
}

/**
 * Starts swtpm (a TPM 2.0) on `stateDir`, its control socket in a private temporary folder (a socket
 * path must stay under 108 bytes). Resolves once the socket is there; fails with swtpm's own words.
 */
export async function startSwtpm(stateDir: string, timeoutMs = 10_000): Promise<Swtpm> {
  // swtpm may open its socket before it looks at its state folder: a missing folder is refused here, not raced.
  if (!statSync(stateDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw dfError('DF_ERR_CONFIG', `swtpm: the TPM state folder ${stateDir} does not exist`, { path: stateDir });
  }
  const run = mkdtempSync(path.join(tmpdir(), 'deskfuse-swtpm-'));
  const socket = path.join(run, 'swtpm.sock');
  const pidFile = path.join(stateDir, '..', 'swtpm.pid');
  let child: ChildProcess;
  try {
    child = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${stateDir},mode=0600`, '--ctrl', `type=unixio,path=${socket}`,
      '--terminate', '--pid', `file=${pidFile}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    rmSync(run, { recursive: true, force: true });
    throw e;
  }
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  const cleanup = () => {
    rmSync(run, { recursive: true, force: true });
    rmSync(pidFile, { force: true });
  };
  const failed = await new Promise<Error | null>((resolve) => {
    const t0 = Date.now();
    child.once('error', (err) => resolve(dfError('DF_ERR_TOOL_MISSING', `swtpm: ${err.message} (apt-get install swtpm)`, { tool: 'swtpm' }, err)));
    void exited.then((c) => resolve(new Error(`swtpm exited (${c}) before its socket was there: ${stderr.trim()}`)));
    const poll = () => {
      if (existsSync(socket)) return resolve(null);
      if (Date.now() - t0 > timeoutMs) return resolve(new Error(`swtpm: no socket ${socket} after ${timeoutMs} ms: ${stderr.trim()}`));
      setTimeout(poll, 20);
    };
    poll();
  });
  if (failed) {
    if (child.exitCode === null && child.pid) child.kill('SIGKILL');
    cleanup();
    throw failed;
  }
  const pid = child.pid!;
  return {
    socket, pid,
    stop: async () => {
      const ended = (ms: number) => Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
      if (child.exitCode === null && child.signalCode === null) {
        if (!(await ended(2000))) {
          child.kill('SIGTERM'); // by its PID: our child, nothing else
          if (!(await ended(3000))) child.kill('SIGKILL');
          await exited;
        }
      }
      cleanup();
    },
  };
}
