/**
 * A progress line for long work on a TTY: bytes done / total, percent, rate and ETA, redrawn at most
 * 10×/s. Off when the stream is not a TTY (scripts, --json), so logs stay clean, unless `'always'`
 * (a --progress flag): then one plain line per second.
 */
export class Progress {
  private done = 0;
  private last = 0;
  private readonly t0 = Date.now();

  constructor(private readonly label: string, private readonly total: number, private readonly out?: NodeJS.WriteStream) {}

  static for(label: string, total: number, enabled: boolean | 'always', out: NodeJS.WriteStream = process.stderr): Progress {
    return new Progress(label, total, enabled === 'always' || (enabled && out.isTTY) ? out : undefined);
  }

  add(n: number): void {
    this.done += n;
    if (!this.out) return;
    const now = Date.now();
    if (now - this.last < (this.out.isTTY ? 100 : 1000)) return;
    this.last = now;
    this.draw(now);
  }

  private draw(now: number): void {
    const secs = Math.max((now - this.t0) / 1000, 0.001);
    const rate = this.done / secs;
    const frac = this.total > 0 ? Math.min(this.done / this.total, 1) : 1;
    const eta = rate > 0 ? (this.total - this.done) / rate : 0;
    const width = 24;
    const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
    const text = `${this.label} [${bar}] ${fmtBytes(this.done)}/${fmtBytes(this.total)} ${Math.floor(frac * 100)}% ${fmtBytes(rate)}/s ETA ${Math.ceil(eta)}s`;
    this.out!.write(this.out!.isTTY ? `\r${text}  ` : `${text}\n`);
  }

  finish(): void {
    if (!this.out) return;
    this.draw(Date.now());
    if (this.out.isTTY) this.out.write('\n');
  }
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
