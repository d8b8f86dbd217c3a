import { execFile, spawnSync } from 'node:child_process';

/** The real NBD clients the tests drive, and the Debian package of each. */
const TOOLS: Record<string, string> = { 'qemu-img': 'qemu-utils', 'qemu-io': 'qemu-utils', nbdinfo: 'libnbd-bin', nbdcopy: 'libnbd-bin' };

/** Fail (never skip) when a client is missing, naming the command that installs it. */
export function requireClients(): void {
  const missing = Object.keys(TOOLS).filter((t) => spawnSync(t, ['--version'], { stdio: 'ignore' }).error);
  if (missing.length) {
    const pkgs = [...new Set(missing.map((t) => TOOLS[t]))].join(' ');
    throw new Error(`missing ${missing.join(', ')}: run \`bash scripts/setup-deps.sh\` or \`apt-get install -y ${pkgs}\``);
  }
}

export interface Run { code: number; out: string; err: string }

/** A client run to its end. Asynchronous: the server under test lives in this process. */
export function run(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 30_000, maxBuffer: 16 << 20 }, (e, stdout, stderr) => {
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, out: stdout, err: stderr });
    });
  });
}
