import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import dgram from 'node:dgram';
import path from 'node:path';

/** Real TFTP clients for integration tests and the benchmark's peers. */
export const CLIENT_PACKAGES = { tftp: 'tftp-hpa', atftp: 'atftp', curl: 'curl', ip: 'iproute2', iptables: 'iptables' } as const;

/** Fail (never skip) when a client is missing, naming the command that installs it. */
export function requireTools(...bins: (keyof typeof CLIENT_PACKAGES)[]): void {
  const missing = bins.filter((b) => !['/usr/bin/', '/usr/sbin/', '/bin/', '/sbin/'].some((d) => existsSync(d + b)));
  if (missing.length) {
    const pkgs = [...new Set(missing.map((b) => CLIENT_PACKAGES[b]))].join(' ');
    throw new Error(`missing ${missing.join(', ')}: run \`bash scripts/setup-deps.sh\` or \`apt-get install -y ${pkgs}\``);
  }
}

export interface Run { code: number; out: string }

/** Run a command (asynchronously: the server under test may live in this process). */
export function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

/** One way to fetch a file: a client and its flags. `ns` runs it inside a network namespace. */
export interface Client { name: string; argv(host: string, port: number, remote: string, local: string): string[] }

export const CLIENTS = {
  hpa: { name: 'tftp-hpa', argv: (h, p, r, l) => ['tftp', '-m', 'binary', h, String(p), '-c', 'get', r, l] },
  hpaAscii: { name: 'tftp-hpa ascii', argv: (h, p, r, l) => ['tftp', '-m', 'ascii', h, String(p), '-c', 'get', r, l] },
  atftp: { name: 'atftp', argv: (h, p, r, l) => ['atftp', '-g', '-r', r, '-l', l, h, String(p)] },
  atftpBlk: { name: 'atftp blksize 1468', argv: (h, p, r, l) => ['atftp', '--option', 'blksize 1468', '-g', '-r', r, '-l', l, h, String(p)] },
  atftpTsize: { name: 'atftp tsize+blksize', argv: (h, p, r, l) => ['atftp', '--option', 'tsize', '--option', 'blksize 1468', '-g', '-r', r, '-l', l, h, String(p)] },
  atftpWin1: { name: 'atftp blksize 1468 windowsize 1', argv: (h, p, r, l) => ['atftp', '--option', 'blksize 1468', '--option', 'windowsize 1', '-g', '-r', r, '-l', l, h, String(p)] },
  atftpWin4: { name: 'atftp blksize 1468 windowsize 4', argv: (h, p, r, l) => ['atftp', '--option', 'blksize 1468', '--option', 'windowsize 4', '-g', '-r', r, '-l', l, h, String(p)] },
  atftpWin16: { name: 'atftp windowsize 16', argv: (h, p, r, l) => ['atftp', '--option', 'windowsize 16', '-g', '-r', r, '-l', l, h, String(p)] },
  curl: { name: 'curl', argv: (h, p, r, l) => ['curl', '-sS', '--path-as-is', '-o', l, `tftp://${h}:${p}/${r}`] },
  curlBlk: { name: 'curl blksize 1468', argv: (h, p, r, l) => ['curl', '-sS', '--path-as-is', '--tftp-blksize', '1468', '-o', l, `tftp://${h}:${p}/${r}`] },
} satisfies Record<string, Client>;

/**
 * Fetch `remote` into `local`. tftp-hpa exits 0 even on an ERROR packet, so an error is also
 * recognised from its output; `ok` is true only when the client reported no error.
 */
export async function fetchWith(c: Client, port: number, remote: string, local: string, ns?: string): Promise<Run & { ok: boolean }> {
  const [cmd, ...args] = c.argv('127.0.0.1', port, remote, local) as [string, ...string[]];
  const r = ns ? await run('ip', ['netns', 'exec', ns, cmd, ...args]) : await run(cmd, args);
  return { ...r, ok: r.code === 0 && !/error|abort/i.test(r.out) };
}

export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
}

/** A raw TFTP peer for what no client does on demand (probe-and-abort, foreign TIDs, fuzz). */
export async function rawPeer(): Promise<{
  sock: dgram.Socket;
  send(buf: Buffer, port: number): void;
  next(timeoutMs?: number): Promise<{ msg: Buffer; port: number }>;
  close(): void;
}> {
  const sock = dgram.createSocket('udp4');
  const queue: { msg: Buffer; port: number }[] = [];
  const waiters: ((v: { msg: Buffer; port: number }) => void)[] = [];
  sock.on('message', (msg, r) => {
    const w = waiters.shift();
    if (w) w({ msg, port: r.port });
    else queue.push({ msg, port: r.port });
  });
  await new Promise<void>((res) => sock.bind(0, '127.0.0.1', res));
  return {
    sock,
    send: (buf, port) => sock.send(buf, port, '127.0.0.1'),
    next: (timeoutMs = 5000) => {
      const q = queue.shift();
      if (q) return Promise.resolve(q);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no packet')), timeoutMs);
        waiters.push((v) => { clearTimeout(t); resolve(v); });
      });
    },
    close: () => sock.close(),
  };
}

const repo = path.resolve(import.meta.dirname, '../..');

/**
 * Compile just src/tftp (and what it imports) for a child process, into `outDir`: the child must
 * run plain JS, and a whole-repo build would depend on everyone else's work in progress.
 * Returns the path of server.js.
 */
export function compileTftp(outDir: string): string {
  execFileSync(path.join(repo, 'node_modules/.bin/tsc'), [
    '--outDir', outDir, '--rootDir', repo, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022',
    '--strict', '--skipLibCheck', '--types', 'node', path.join(repo, 'src/tftp/server.ts'),
  ], { stdio: 'inherit', cwd: repo });
  return path.join(outDir, 'src/tftp/server.js');
}

export const SERVE_SCRIPT = path.join(import.meta.dirname, 'tftp-serve.mjs');
