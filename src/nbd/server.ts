import { existsSync } from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { parentPort, Worker, type MessagePort } from 'node:worker_threads';
import { dfError, isDeskfuseError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { CMD, CMD_FLAG, CMD_NAME, DEFAULT_MAX_PAYLOAD, ERRNO, ERRNO_NAME, REPLY_FLAG } from './constants.js';
import { loadNative } from '../native/addon.js';
import type { NbdExport, NbdExportProvider, NbdHandoff } from './export.js';
import { RequestFramer, type RequestItem } from './framer.js';
import { Negotiation, wireMessage, type Negotiated } from './negotiate.js';
import { nbdTlsContext, upgradeToTls, type NbdTlsContext, type NbdTlsOptions } from './tls.js';
import { encodeChunk, encodeOffsetDataHead, encodeSimpleReply, type Extent, type Request } from './transmission.js';

/**
 * NBD server (NetworkBlockDevice/nbd doc/proto.md): the socket adapter around the codec (packet.ts),
 * the handshake (negotiate.ts) and the export policy (export.ts). One Connection per TCP socket:
 * handshake, then transmission, where requests are decoded as they arrive and run concurrently
 * (replies may complete out of order, proto.md "Transmission"), bounded by `maxInFlight` and by the
 * socket's write buffer. Bad input ends that one connection; the server keeps serving.
 */

export interface NbdOptions {
  host: string;
  /** Default 10809 (the IANA port); 0 picks a free port. */
  port?: number;
  provider: NbdExportProvider;
  log: Logger;
  /** Largest READ/WRITE payload (proto.md "Size constraints"); default 32 MiB. A bigger WRITE hangs up. */
  maxPayload?: number;
  /** Requests running at once per connection before the socket is paused; default 64. */
  maxInFlight?: number;
  /** Time allowed from connect to transmission; default 30 s. */
  handshakeTimeoutMs?: number;
  /** NBD_OPT_STARTTLS (proto.md "TLS support"); absent: NOTLS mode. */
  tls?: NbdTlsOptions;
  /**
   * Worker threads that serve connections after their handshake (exports with `handoff`, see
   * NbdThreads): `script` is the thread's entry (a module calling `serveInThread`); count 0 or a
   * missing script (run from source) serves everything on the main thread.
   */
  threads?: { count: number; script: string };
}

export interface NbdServer {
  port: number;
  /** Stops listening, answers in-flight requests, hangs up every connection; exports get close({clean:false}). */
  close(): Promise<void>;
  connections(): number;
}

/**
 * Stop reading requests while this much reply data waits in the socket (the client reads slowly).
 * The kernel's socket buffer holds megabytes more: a bigger queue here only held RSS (reply buffers
 * waiting, then garbage), with 4 connections of nbdcopy tens of MiB.
 */
const WRITE_HIGH_WATER = 2 << 20;
/** A hang-up waits this long for queued replies to drain before dropping the socket. */
const HANGUP_GRACE_MS = 10_000;

export async function startNbd(opts: NbdOptions): Promise<NbdServer> {
  const cfg: ConnConfig = {
    provider: opts.provider,
    maxPayload: opts.maxPayload ?? DEFAULT_MAX_PAYLOAD,
    maxInFlight: Math.max(1, opts.maxInFlight ?? 64),
    handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 30_000,
    // One pool for all connections: its size does not grow with the number of VMs.
    pool: new BufferPool(8 << 20),
    tls: opts.tls ? { mode: opts.tls.mode, context: nbdTlsContext(opts.tls) } : undefined,
    threads: opts.threads && opts.threads.count > 0 && existsSync(opts.threads.script) && NbdThreads.usable() ? new NbdThreads(opts.threads.count, opts.threads.script, opts.log) : undefined,
  };
  const log = opts.log;
  const conns = new Set<Connection>();
  let closing: Promise<void> | undefined;
  // allowHalfOpen: a client that shuts its side down still gets the replies to what it sent.
  const server = net.createServer({ allowHalfOpen: true, noDelay: true });
  server.on('connection', (sock) => {
    if (closing) { sock.destroy(); return; }
    const c = new Connection(sock, cfg, log);
    conns.add(c);
    void c.done.then(() => conns.delete(c));
  });
  server.on('error', (err) => log.error({ err }, 'nbd listener error'));
  const port = opts.port ?? 10809;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(dfError('DF_ERR_CONFIG', `nbd cannot listen on ${opts.host}:${port}: ${err.message}`, { field: 'nbd.listen' }, err));
    server.once('error', onError);
    server.listen(port, opts.host, () => { server.off('error', onError); resolve(); });
  });
  const bound = (server.address() as net.AddressInfo).port;
  log.debug({ host: opts.host, port: bound }, 'nbd listening'); // the service around it logs at info
  return {
    port: bound,
    connections: () => conns.size,
    close: () => {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        await Promise.all([...conns].map((c) => c.shutdown()));
        await stopped;
        await cfg.threads?.close();
        log.debug({ port: bound }, 'nbd stopped');
      })();
      return closing;
    },
  };
}

interface ConnConfig {
  provider: NbdExportProvider;
  maxPayload: number;
  maxInFlight: number;
  handshakeTimeoutMs: number;
  /** READ reply buffers, shared by the server's connections (one thread: no locking needed). */
  pool: BufferPool;
  tls: { mode: NbdTlsOptions['mode']; context: NbdTlsContext } | undefined;
  threads?: NbdThreads | undefined;
}

/** Command flags each command accepts (proto.md "Command flags"); FUA on any, as clients send it. */
const CMD_FLAGS: Record<number, number> = {
  [CMD.READ]: CMD_FLAG.FUA | CMD_FLAG.DF,
  [CMD.WRITE]: CMD_FLAG.FUA,
  [CMD.FLUSH]: CMD_FLAG.FUA,
  [CMD.TRIM]: CMD_FLAG.FUA,
  [CMD.CACHE]: CMD_FLAG.FUA,
  [CMD.WRITE_ZEROES]: CMD_FLAG.FUA | CMD_FLAG.NO_HOLE,
  [CMD.BLOCK_STATUS]: CMD_FLAG.FUA | CMD_FLAG.REQ_ONE,
};
const WRITES = new Set<number>([CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]);
/** proto.md "Error values": a write beyond the end is ENOSPC, any other range error EINVAL. */
const GROWS = new Set<number>([CMD.WRITE, CMD.WRITE_ZEROES]);

/** Export errors to NBD errnos: deskfuse codes, then the system errnos proto.md names; else EIO. */
const ERRNO_OF_CODE: Partial<Record<ErrorCode, number>> = {
  DF_ERR_BAD_REQUEST: ERRNO.EINVAL,
  DF_ERR_GEOMETRY: ERRNO.EINVAL,
  DF_ERR_UNAUTHORIZED: ERRNO.EPERM,
  DF_ERR_FORBIDDEN: ERRNO.EPERM,
  DF_ERR_TOKEN_EXPIRED: ERRNO.EPERM,
  DF_ERR_LEASE_LOST: ERRNO.EPERM,
  DF_ERR_DISK_TOO_SMALL: ERRNO.ENOSPC,
  DF_ERR_NO_SPACE: ERRNO.ENOSPC,
};
const ERRNO_OF_SYSTEM: Record<string, number> = { ENOSPC: ERRNO.ENOSPC, EDQUOT: ERRNO.ENOSPC, EFBIG: ERRNO.ENOSPC, EROFS: ERRNO.EPERM };

export function errnoOf(err: unknown): number {
  if (isDeskfuseError(err)) return ERRNO_OF_CODE[err.code] ?? ERRNO.EIO;
  const code = (err as { code?: unknown } | null)?.code;
  return (typeof code === 'string' && ERRNO_OF_SYSTEM[code]) || ERRNO.EIO;
}

interface Refusal { errno: number; message: string }
const einval = (message: string): Refusal => ({ errno: ERRNO.EINVAL, message });

/**
 * The checks proto.md asks of a server before it acts ("Command flags", "Size constraints", "Error
 * values"), so an export only sees requests valid for it (export.ts). Pure.
 */
export function validate(q: Request, exp: NbdExport, s: { structured: boolean; allocationContext: number | undefined; maxPayload: number }): Refusal | undefined {
  const allowed = CMD_FLAGS[q.type];
  const name = CMD_NAME[q.type] ?? String(q.type);
  if (allowed === undefined) return einval(`unknown command ${q.type}`);
  if (q.flags & ~allowed) return einval(`command flags 0x${(q.flags & ~allowed).toString(16)} are not valid for ${name}`);
  if (q.flags & CMD_FLAG.DF && !s.structured) return einval('NBD_CMD_FLAG_DF needs structured replies');
  if (WRITES.has(q.type) && exp.readOnly) return { errno: ERRNO.EPERM, message: 'the export is read-only' };
  if (q.type === CMD.FLUSH) return q.offset !== 0 || q.length !== 0 ? einval('flush offset and length must be zero') : undefined;
  if (q.type === CMD.BLOCK_STATUS && s.allocationContext === undefined) return einval('no metadata context was negotiated');
  if (q.length === 0) return einval(`${name} of length 0`);
  if (q.offset + q.length > exp.size) {
    return { errno: GROWS.has(q.type) ? ERRNO.ENOSPC : ERRNO.EINVAL, message: `${name} [${q.offset}, +${q.length}) beyond the export's end ${exp.size}` };
  }
  const min = exp.blockSize.minimum;
  if (q.offset % min !== 0 || q.length % min !== 0) return einval(`${name} not aligned to the minimum block size ${min}`);
  const max = Math.min(exp.blockSize.maximum, s.maxPayload);
  if ((q.type === CMD.READ || q.type === CMD.WRITE) && q.length > max) return einval(`${name} of ${q.length} bytes exceeds the maximum payload ${max}`);
  return undefined;
}

/**
 * proto.md "NBD_CMD_BLOCK_STATUS": at least one extent, none empty, none past the request (so none past
 * the export), exactly one with REQ_ONE, at most 2^20; equal neighbours merged. Pure.
 */
export function shapeExtents(extents: Extent[], length: number, reqOne: boolean): Extent[] {
  const out: Extent[] = [];
  let total = 0;
  for (const e of extents) {
    if (total >= length || out.length >= 1 << 20) break;
    if (e.length <= 0) continue;
    const n = Math.min(e.length, length - total);
    const last = out[out.length - 1];
    if (last && last.flags === e.flags) last.length += n;
    else out.push({ length: n, flags: e.flags });
    total += n;
  }
  return reqOne ? out.slice(0, 1) : out;
}

/**
 * Reply buffers of READs, reused once the socket has taken them (the write callback): a disk read in
 * 256 KiB requests would otherwise allocate and collect a buffer per request (measured: a fifth of the
 * server's CPU in the garbage collector). Kept per length, within a byte budget for the whole server.
 */
class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;
  constructor(private readonly maxBytes: number) {}

  take(n: number): Buffer {
    const b = this.free.get(n)?.pop();
    if (!b) return Buffer.allocUnsafe(n);
    this.kept -= n;
    return b;
  }

  give(b: Buffer): void {
    if (this.kept + b.length > this.maxBytes) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.kept += b.length;
  }
}

const fieldsOf = (q: Request) => ({ type: CMD_NAME[q.type] ?? q.type, flags: q.flags, offset: q.offset, length: q.length, cookie: q.cookie.toString(16) });

class Connection {
  readonly done: Promise<void>;
  private readonly log: Logger;
  private readonly remote: string;
  private readonly neg: Negotiation;
  private readonly timer: NodeJS.Timeout;
  private readonly closed: Promise<void>;
  private phase: 'handshake' | 'transmission' = 'handshake';
  private framer: RequestFramer | undefined;
  private session: Negotiated | undefined;
  /** No further requests are read: DISC, hang-up, protocol error or shutdown. */
  private stopped = false;
  private disc = false;
  /** The client shut its side down: what it sent is still served, then we hang up. */
  private eof = false;
  private exportClosed = false;
  private wrote = false;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  /** Writes in flight: a FLUSH waits for those received before it (proto.md "Ordering of messages and writes"). */
  private readonly writes = new Set<Promise<void>>();
  private readonly stats = { requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
  private get pool(): BufferPool { return this.cfg.pool; }
  private readonly t0 = performance.now();

  /** The TCP socket, then the TLS socket over it once NBD_OPT_STARTTLS succeeded. */
  private sock: net.Socket;
  private readonly handlers = {
    data: (b: Buffer) => this.onData(b),
    end: () => this.onEnd(),
    error: (err: Error) => this.log.debug({ err: err.message }, 'nbd socket error'),
    close: () => this.onClose(),
  };
  private onClose!: () => void;

  constructor(sock: net.Socket, private readonly cfg: ConnConfig, baseLog: Logger, private readonly resume?: { got: Negotiated; rest: Buffer; remote: string }) {
    this.sock = sock;
    this.remote = resume?.remote ?? (sock.remoteFamily === 'IPv6' ? `[${sock.remoteAddress}]:${sock.remotePort}` : `${sock.remoteAddress}:${sock.remotePort}`);
    this.log = resume ? baseLog : baseLog.child({ nbd: this.remote });
    if (!resume) this.log.info({}, 'nbd connect');
    sock.setNoDelay(true);
    const tlsCfg = cfg.tls;
    this.neg = new Negotiation({
      send: (b) => this.send([b]),
      flow: (on) => { if (on) this.sock.resume(); else this.sock.pause(); },
      remote: this.remote,
      log: this.log,
      provider: cfg.provider,
      maxPayload: cfg.maxPayload,
      ...(tlsCfg ? { tls: { mode: tlsCfg.mode, start: () => this.startTls(tlsCfg.context) } } : {}),
    });
    this.closed = new Promise((resolve) => {
      this.onClose = () => { this.stopped = true; this.neg.abort(); clearTimeout(this.timer); resolve(); };
    });
    this.attach(sock);
    this.timer = setTimeout(() => {
      if (this.phase !== 'handshake') return;
      this.log.info({ ms: cfg.handshakeTimeoutMs }, 'nbd handshake timed out');
      this.sock.destroy();
    }, cfg.handshakeTimeoutMs);
    this.done = this.life().catch((err: unknown) => {
      this.log.error({ err }, 'nbd connection failed');
      this.sock.destroy();
    });
  }

  private attach(s: net.Socket): void {
    s.on('data', this.handlers.data);
    s.on('end', this.handlers.end);
    s.on('error', this.handlers.error);
    s.once('close', this.handlers.close);
  }

  /**
   * After NBD_REP_ACK to STARTTLS: the same TCP connection carries TLS from here on. Bytes the TCP
   * socket already holds came in clear: refused (negotiate.ts says why).
   */
  private startTls(context: NbdTlsContext): Promise<string | undefined> {
    const raw = this.sock;
    if (raw.readableLength > 0) return Promise.resolve(`${raw.readableLength} bytes sent in clear after NBD_OPT_STARTTLS`);
    raw.off('data', this.handlers.data);
    raw.off('end', this.handlers.end);
    raw.off('close', this.handlers.close);
    const { socket, secured } = upgradeToTls(raw, context);
    this.sock = socket;
    this.attach(socket);
    // The TLS socket owns the descriptor now; a TCP-level error still ends the session.
    raw.once('close', () => { if (!socket.destroyed) socket.destroy(); });
    return secured.then((failed) => {
      // One line per failed upgrade (a client with the wrong CA or key): the admin's first clue.
      if (failed !== undefined) this.log.info({ reason: failed }, 'nbd tls failed');
      return failed;
    });
  }

  /** Server shutdown: answer what is in flight, then hang up (proto.md "Terminating the transmission phase"). */
  shutdown(): Promise<void> {
    if (this.thread) this.thread.shutdown();
    else if (this.phase === 'handshake') this.sock.destroy();
    else this.stop();
    return this.done;
  }

  /** Served by a worker thread after the handshake (NbdThreads): how to stop it there. */
  private thread: { shutdown(): void } | undefined;

  /** What the thread serving a handed-off connection reports when it ends. */
  outcome(): { clean: boolean; wrote: boolean; stats: Connection['stats'] } {
    return { clean: this.disc, wrote: this.wrote, stats: this.stats };
  }

  private async life(): Promise<void> {
    let got: Negotiated | undefined = this.resume?.got;
    if (!got) {
      try {
        got = await this.neg.run();
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'nbd malformed handshake; closing');
      }
    }
    clearTimeout(this.timer);
    if (!got) {
      this.sock.destroy();
      await this.closed;
      this.log.info({ ms: Math.round(performance.now() - this.t0) }, 'nbd disconnect');
      return;
    }
    this.session = got;
    if (!this.resume && this.cfg.threads && !got.tls) {
      // TLS connections stay here: the TLS state lives in this thread's OpenSSL objects, which a
      // descriptor handed to another thread cannot carry (README "NBD for VDI").
      const h = got.exp.handoff?.();
      if (h && (await this.handOff(got, h, this.cfg.threads))) return;
    }
    this.phase = 'transmission';
    this.framer = new RequestFramer({ maxPayload: this.cfg.maxPayload, payload: 'whole' });
    this.framer.push(this.resume ? this.resume.rest : this.neg.takeRest());
    this.log.info({ export: got.exp.name, size: got.exp.size, readOnly: got.exp.readOnly, structured: got.structured, flags: got.flags, tls: got.tls }, 'nbd export opened');
    this.sock.on('drain', () => this.pump());
    this.pump();
    await this.closed;
    if (this.framer.buffered > 0 && !this.disc) this.log.debug({ bytes: this.framer.buffered }, 'nbd request stream truncated');
    await this.idle();
    await this.closeExport(false);
    this.log.info({ export: got.exp.name, clean: this.disc, ...this.stats, ms: Math.round(performance.now() - this.t0) }, 'nbd disconnect');
  }

  /**
   * Gives the socket to a worker thread: the handshake's replies flushed, a dup()ed descriptor and
   * the bytes already read go there, this thread's socket is closed without a FIN (the copy keeps the
   * connection). False: not possible (no descriptor, no native addon), served here as usual.
   */
  private async handOff(got: Negotiated, h: NbdHandoff, threads: NbdThreads): Promise<boolean> {
    const sock = this.sock;
    sock.pause();
    while (sock.writableLength > 0 && !sock.destroyed) await new Promise<void>((resolve) => { sock.once('drain', resolve); sock.once('close', resolve); });
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (sock.destroyed || typeof fd !== 'number' || fd < 0) return false;
    let copy: number;
    try {
      copy = loadNative().dup(fd);
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'nbd connection not handed to a thread');
      return false;
    }
    // From here to destroy() nothing yields: what this socket has read is taken, nothing more is.
    const rest = [this.neg.takeRest()];
    for (let b: Buffer | null; (b = sock.read() as Buffer | null) !== null;) rest.push(b);
    sock.off('data', this.handlers.data);
    sock.off('end', this.handlers.end);
    sock.off('close', this.handlers.close);
    sock.destroy();
    const t = threads.serve({ fd: copy, rest: Buffer.concat(rest), got, handoff: h, remote: this.remote, log: this.log, maxPayload: this.cfg.maxPayload, maxInFlight: this.cfg.maxInFlight });
    this.thread = t;
    const out = await t.done;
    this.wrote = out.wrote;
    this.disc = out.clean;
    Object.assign(this.stats, out.stats);
    this.onClose();
    await this.closeExport(out.clean);
    // The thread logged 'nbd disconnect' with its counts (through this connection's logger).
    return true;
  }

  private onData(b: Buffer): void {
    if (this.phase === 'handshake') { this.neg.push(b); return; }
    if (this.stopped) return;
    this.framer!.push(b);
    this.pump();
  }

  /** The client shut its side down: serve what it sent (options, then requests), then hang up. */
  private onEnd(): void {
    this.eof = true;
    if (this.phase === 'handshake') this.neg.endOfInput();
    else this.pump();
  }

  private canRead(): boolean {
    return !this.stopped && this.inFlight < this.cfg.maxInFlight && this.sock.writableLength < WRITE_HIGH_WATER;
  }

  /** Dispatches buffered requests while there is room, and pauses or resumes the socket to match. */
  private pump(): void {
    if (this.phase !== 'transmission') return;
    let drained = false;
    while (this.canRead()) {
      let item: RequestItem | undefined;
      try {
        item = this.framer!.next();
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'nbd malformed request stream; closing');
        this.stop();
        return;
      }
      if (!item) { drained = true; break; }
      this.dispatch(item);
    }
    // After the client's FIN, hang up once everything it sent has been dispatched (and answered).
    if (this.eof && drained) { this.stop(); return; }
    // Only on a change: pause/resume reach the event loop (epoll) every time they are called.
    if (this.canRead()) { if (this.sock.isPaused()) this.sock.resume(); } else if (!this.sock.isPaused()) this.sock.pause();
  }

  private dispatch(item: RequestItem): void {
    if (item.kind !== 'request') return; // 'whole' mode: WRITE data comes with its request
    const q = item.request;
    this.stats.requests++;
    if (q.type === CMD.DISC) { this.disconnect(); return; }
    if (q.type === CMD.READ && this.readNow(q)) return;
    if (q.type === CMD.BLOCK_STATUS && this.statusNow(q)) return;
    this.inFlight++;
    const job = this.handle(q, item.data)
      .catch((err: unknown) => this.log.error({ err, request: fieldsOf(q) }, 'nbd request failed unexpectedly'))
      .finally(() => this.settled());
    if (WRITES.has(q.type)) {
      this.writes.add(job);
      void job.finally(() => this.writes.delete(job));
    }
  }

  private settled(): void {
    this.inFlight--;
    if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    this.pump();
  }

  private idle(): Promise<void> {
    return this.inFlight === 0 ? Promise.resolve() : new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop reading; hang up once in-flight requests are answered. The export closes on 'close'. */
  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.sock.pause();
    void this.idle().then(() => this.hangUp());
  }

  /** proto.md "NBD_CMD_DISC": handle all outstanding requests, then close; no reply. */
  private disconnect(): void {
    this.disc = true;
    this.stopped = true;
    this.sock.pause();
    void this.idle()
      .then(() => this.closeExport(true))
      .then(() => this.hangUp());
  }

  private hangUp(): void {
    if (this.sock.destroyed) return;
    const t = setTimeout(() => this.sock.destroy(), HANGUP_GRACE_MS);
    t.unref();
    void this.closed.then(() => clearTimeout(t));
    this.sock.end(() => this.sock.destroy());
  }

  private async closeExport(clean: boolean): Promise<void> {
    if (this.exportClosed || !this.session) return;
    this.exportClosed = true;
    try {
      await this.session.exp.close({ clean, wrote: this.wrote });
    } catch (err) {
      this.log.warn({ err, export: this.session.exp.name }, 'nbd export close failed');
    }
  }

  private send(bufs: Buffer[]): void {
    if (this.sock.destroyed || !this.sock.writable) return;
    this.sock.cork();
    for (const b of bufs) this.sock.write(b);
    this.sock.uncork();
  }

  private replyOk(q: Request): void {
    this.send([encodeSimpleReply({ error: 0, cookie: q.cookie })]);
  }

  /** proto.md "Structured reply chunk message": with structured replies errors carry a message (and READ must use one). */
  private replyError(q: Request, errno: number, message: string): void {
    this.stats.errors++;
    this.send([this.session!.structured
      ? encodeChunk({ flags: REPLY_FLAG.DONE, cookie: q.cookie, kind: 'error', error: errno, message: wireMessage(message) })
      : encodeSimpleReply({ error: errno, cookie: q.cookie })]);
  }

  private async handle(q: Request, data: Buffer | undefined, failed?: unknown): Promise<void> {
    const s = this.session!;
    const exp = s.exp;
    if (failed !== undefined) return this.replyFailure(q, exp, failed);
    // A FLUSH covers the writes received before it: snapshot them now, before any await.
    const before = q.type === CMD.FLUSH ? [...this.writes] : [];
    const bad = validate(q, exp, { ...s, maxPayload: this.cfg.maxPayload });
    if (bad) {
      this.log.debug({ request: fieldsOf(q), errno: ERRNO_NAME[bad.errno], reason: bad.message }, 'nbd request refused');
      this.replyError(q, bad.errno, bad.message);
      return;
    }
    const fua = (q.flags & CMD_FLAG.FUA) !== 0;
    try {
      switch (q.type) {
        case CMD.READ: return await this.read(q, exp);
        case CMD.WRITE:
          this.wrote = true;
          await exp.write(q.offset, data ?? Buffer.alloc(0), fua);
          this.stats.bytesWritten += q.length;
          break;
        case CMD.TRIM: case CMD.WRITE_ZEROES:
          this.wrote = true;
          await exp.zero(q.offset, q.length, fua);
          break;
        case CMD.FLUSH:
          await Promise.allSettled(before);
          if (!exp.readOnly) await exp.flush();
          break;
        case CMD.BLOCK_STATUS: return await this.blockStatus(q, exp, s.allocationContext!);
        case CMD.CACHE: break; // a hint (proto.md "NBD_CMD_CACHE"); not advertised, answered as done
      }
      this.replyOk(q);
    } catch (err) {
      this.replyFailure(q, exp, err);
    }
  }

  private replyFailure(q: Request, exp: NbdExport, err: unknown): void {
    const errno = errnoOf(err);
    this.log.warn({ err, request: fieldsOf(q), export: exp.name, errno: ERRNO_NAME[errno] }, 'nbd export error');
    this.replyError(q, errno, isDeskfuseError(err) ? err.message : ERRNO_NAME[errno]!);
  }

  /**
   * proto.md "NBD_CMD_READ": everything is in memory before the first byte goes out, so an export
   * error is always a clean error reply. Structured: one OFFSET_DATA chunk per piece, the last DONE
   * (one chunk with NBD_CMD_FLAG_DF); simple: header then the bytes.
   */
  private async read(q: Request, exp: NbdExport): Promise<void> {
    if (exp.readInto) return this.readInto(q, exp, exp.readInto);
    const got = await exp.read(q.offset, q.length);
    let pieces = (Array.isArray(got) ? got : [got]).filter((b) => b.length > 0);
    const n = pieces.reduce((sum, b) => sum + b.length, 0);
    if (n !== q.length) throw dfError('DF_ERR_INTERNAL', `export ${exp.name} returned ${n} bytes for a read of ${q.length}`, { export: exp.name });
    this.stats.bytesRead += n;
    if (!this.session!.structured) {
      this.send([encodeSimpleReply({ error: 0, cookie: q.cookie }), ...pieces]);
      return;
    }
    if (q.flags & CMD_FLAG.DF && pieces.length > 1) pieces = [Buffer.concat(pieces)];
    const out: Buffer[] = [];
    let at = q.offset;
    pieces.forEach((b, i) => {
      out.push(encodeOffsetDataHead(i === pieces.length - 1 ? REPLY_FLAG.DONE : 0, q.cookie, at, b.length), b);
      at += b.length;
    });
    this.send(out);
  }

  /**
   * A READ the export can answer at once (its readInto returns no promise): validated, filled and
   * replied in this call, without the promise chain of handle(). False = take the usual path.
   */
  private readNow(q: Request): boolean {
    const s = this.session!;
    const readInto = s.exp.readInto;
    if (!readInto || validate(q, s.exp, { ...s, maxPayload: this.cfg.maxPayload })) return false;
    const buf = this.pool.take(q.length);
    let r: Promise<void> | void;
    try {
      r = readInto.call(s.exp, q.offset, buf);
    } catch {
      this.pool.give(buf);
      return false; // handle() reads again and reports the error
    }
    if (r) {
      // Not ready after all: finish it on the usual path (it owns the buffer from here).
      this.inFlight++;
      const job = r.then(() => this.sendRead(q, buf), (err: unknown) => { this.pool.give(buf); return this.handle(q, undefined, err); })
        .catch((err: unknown) => this.log.error({ err, request: fieldsOf(q) }, 'nbd request failed unexpectedly'))
        .finally(() => this.settled());
      void job;
      return true;
    }
    this.sendRead(q, buf);
    return true;
  }

  private sendRead(q: Request, buf: Buffer): void {
    this.stats.bytesRead += q.length;
    const head = this.session!.structured
      ? encodeOffsetDataHead(REPLY_FLAG.DONE, q.cookie, q.offset, q.length)
      : encodeSimpleReply({ error: 0, cookie: q.cookie });
    if (this.sock.destroyed || !this.sock.writable) return;
    this.sock.cork();
    this.sock.write(head);
    // Flushed to the kernel: the buffer is free, and reading may resume below the high-water mark
    // (waiting for 'drain', i.e. an empty queue, would leave the pipe idle between bursts).
    this.sock.write(buf, () => { this.pool.give(buf); this.pump(); });
    this.sock.uncork();
  }

  /** One buffer from the pool, filled by the export, sent as one OFFSET_DATA chunk (or after a simple reply). */
  private async readInto(q: Request, exp: NbdExport, readInto: NonNullable<NbdExport['readInto']>): Promise<void> {
    const buf = this.pool.take(q.length);
    try {
      await readInto.call(exp, q.offset, buf);
    } catch (err) {
      this.pool.give(buf);
      throw err;
    }
    this.sendRead(q, buf);
  }


  private async blockStatus(q: Request, exp: NbdExport, contextId: number): Promise<void> {
    this.sendStatus(q, exp, contextId, await exp.extents(q.offset, q.length));
  }

  private sendStatus(q: Request, exp: NbdExport, contextId: number, got: Extent[]): void {
    const extents = shapeExtents(got, q.length, (q.flags & CMD_FLAG.REQ_ONE) !== 0);
    if (extents.length === 0) throw dfError('DF_ERR_INTERNAL', `export ${exp.name} returned no extents`, { export: exp.name });
    this.send([encodeChunk({ flags: REPLY_FLAG.DONE, cookie: q.cookie, kind: 'block-status', contextId, extents })]);
  }

  /** BLOCK_STATUS an export answers without a promise (an immutable version's map): replied in this call. */
  private statusNow(q: Request): boolean {
    const s = this.session!;
    if (validate(q, s.exp, { ...s, maxPayload: this.cfg.maxPayload })) return false;
    let got: Promise<Extent[]> | Extent[];
    try {
      got = s.exp.extents(q.offset, q.length);
    } catch {
      return false; // handle() asks again and reports the error
    }
    if (!Array.isArray(got)) {
      this.inFlight++;
      void got.then((ex) => this.sendStatus(q, s.exp, s.allocationContext!, ex), (err: unknown) => this.handle(q, undefined, err))
        .catch((err: unknown) => this.handle(q, undefined, err))
        .finally(() => this.settled());
      return true;
    }
    try {
      this.sendStatus(q, s.exp, s.allocationContext!, got);
    } catch {
      return false;
    }
    return true;
  }
}

/**
 * Worker threads that serve handed-off connections (NbdOptions.threads): the main thread keeps
 * listening, TLS, the handshake and every export that cannot move (sessions, which write); a
 * read-only version export moves with its socket (a dup()ed descriptor) to the least busy thread,
 * which runs the same Connection code over it. Under CPU load the server then has more than one
 * thread to be scheduled on, as nbdkit does. What the thread's export asks of the main thread
 * (NbdHandoff.call) is answered here, by kind.
 */
class NbdThreads {
  private readonly workers: Array<{ worker: Worker; conns: number; index: number } | undefined>;
  private readonly handlers = new Map<string, (req: unknown) => Promise<unknown>>();
  private readonly running = new Map<number, { log: Logger; worker: { worker: Worker }; end: (o: { clean: boolean; wrote: boolean; stats: Connection['stats'] }) => void }>();
  private nextId = 0;
  private closed = false;

  static usable(): boolean {
    try {
      return typeof loadNative().dup === 'function';
    } catch {
      return false;
    }
  }

  constructor(count: number, private readonly script: string, private readonly log: Logger) {
    this.workers = new Array(count).fill(undefined);
  }

  serve(o: { fd: number; rest: Buffer; got: Negotiated; handoff: NbdHandoff; remote: string; log: Logger; maxPayload: number; maxInFlight: number }): { thread: number; done: Promise<{ clean: boolean; wrote: boolean; stats: Connection['stats'] }>; shutdown(): void } {
    const w = this.pick();
    const id = ++this.nextId;
    const kind = (o.handoff as NbdHandoff & { kind?: string }).kind ?? 'default';
    this.handlers.set(kind, o.handoff.call);
    w.conns++;
    const done = new Promise<{ clean: boolean; wrote: boolean; stats: Connection['stats'] }>((resolve) => this.running.set(id, { log: o.log, worker: w, end: resolve }));
    void done.then(() => { w.conns--; this.running.delete(id); });
    const { exp: _exp, ...got } = o.got;
    w.worker.postMessage({ op: 'conn', id, fd: o.fd, rest: o.rest, got, kind, data: o.handoff.data, remote: o.remote, maxPayload: o.maxPayload, maxInFlight: o.maxInFlight });
    return { thread: w.index, done, shutdown: () => w.worker.postMessage({ op: 'shutdown', id }) };
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.splice(0).map((w) => w?.worker.terminate()));
  }

  private pick(): { worker: Worker; conns: number; index: number } {
    let best = -1;
    for (let i = 0; i < this.workers.length; i++) {
      const w = this.workers[i];
      if (!w) return (this.workers[i] = this.start(i));
      if (best < 0 || w.conns < this.workers[best]!.conns) best = i;
    }
    return this.workers[best]!;
  }

  private start(index: number): { worker: Worker; conns: number; index: number } {
    // A small young generation: a thread serving reads makes little garbage (pooled reply buffers), and
    // V8's default lets each thread's grow to 32 MiB+ of RSS. (Not for the store's workers: there a
    // 4 MiB one doubled a session commit's CPU and raised its peak RSS, bench/nbd.sh 4.)
    const worker = new Worker(this.script, { resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    worker.unref();
    const w = { worker, conns: 0, index };
    worker.on('message', (m: ThreadMessage) => {
      if (m.op === 'closed') { this.running.get(m.id)?.end({ clean: m.clean, wrote: m.wrote, stats: m.stats }); return; }
      if (m.op === 'log') { const r = this.running.get(m.id); (r?.log ?? this.log)[m.level]({ ...m.obj, thread: index }, m.msg); return; }
      if (m.op === 'call') {
        const h = this.handlers.get(m.kind);
        const reply = (r: { reply?: unknown; error?: { message: string; code?: string } }) => { if (!this.closed) worker.postMessage({ op: 'reply', seq: m.seq, ...r }); };
        if (!h) { reply({ error: { message: `no handler for ${m.kind}` } }); return; }
        h(m.req).then((r) => reply({ reply: r }), (err: unknown) => reply({ error: { message: (err as Error).message, code: (err as { code?: string }).code } }));
      }
    });
    const fail = (err: unknown): void => {
      if (this.workers[index] === w) this.workers[index] = undefined;
      if (!this.closed) this.log.error({ err, thread: index }, 'nbd thread failed');
      // Its connections are gone with it (the descriptors were the thread's).
      for (const r of [...this.running.values()]) if (r.worker === w) r.end({ clean: false, wrote: false, stats: { requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0 } });
    };
    worker.on('error', fail);
    worker.on('exit', (code) => { if (!this.closed) fail(new Error(`nbd thread exited with ${code}`)); });
    return w;
  }
}

type ThreadMessage =
  | { op: 'closed'; id: number; clean: boolean; wrote: boolean; stats: Connection['stats'] }
  | { op: 'log'; id: number; level: 'trace' | 'debug' | 'info' | 'warn' | 'error'; obj: Record<string, unknown>; msg?: string }
  | { op: 'call'; kind: string; seq: number; req: unknown };

/**
 * The body of an NBD worker thread (NbdThreads): serves the connections the main thread hands it,
 * each over an export `rebuild` makes from the handoff's data; `call` asks the main thread.
 */
export function serveInThread(rebuild: (kind: string, data: unknown, call: (req: unknown) => Promise<unknown>) => NbdExport): void {
  const port = parentPort!;
  const waiting = new Map<number, { resolve: (r: unknown) => void; reject: (err: unknown) => void }>();
  const conns = new Map<number, Connection>();
  const pool = new BufferPool(4 << 20);
  let seq = 0;
  const callOf = (kind: string) => (req: unknown): Promise<unknown> => new Promise((resolve, reject) => {
    const s = ++seq;
    waiting.set(s, { resolve, reject });
    port.postMessage({ op: 'call', kind, seq: s, req });
  });
  const calls = new Map<string, (req: unknown) => Promise<unknown>>();
  port.on('message', (m: { op: string; id: number; seq: number; reply?: unknown; error?: { message: string; code?: string }; fd: number; rest: Uint8Array; got: Omit<Negotiated, 'exp'>; kind: string; data: unknown; remote: string; maxPayload: number; maxInFlight: number }) => {
    if (m.op === 'reply') {
      const w = waiting.get(m.seq);
      waiting.delete(m.seq);
      if (m.error) w?.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
      else w?.resolve(m.reply);
    } else if (m.op === 'shutdown') {
      void conns.get(m.id)?.shutdown();
    } else if (m.op === 'conn') {
      let call = calls.get(m.kind);
      if (!call) calls.set(m.kind, (call = callOf(m.kind)));
      const log = threadLog(port, m.id);
      let c: Connection;
      try {
        const exp = rebuild(m.kind, m.data, call);
        const sock = new net.Socket({ fd: m.fd, allowHalfOpen: true, readable: true, writable: true });
        const cfg: ConnConfig = { provider: NO_PROVIDER, maxPayload: m.maxPayload, maxInFlight: m.maxInFlight, handshakeTimeoutMs: 30_000, pool, tls: undefined };
        c = new Connection(sock, cfg, log, { got: { ...m.got, exp }, rest: Buffer.from(m.rest.buffer, m.rest.byteOffset, m.rest.byteLength), remote: m.remote });
      } catch (err) {
        log.error({ err }, 'nbd thread could not take the connection');
        port.postMessage({ op: 'closed', id: m.id, clean: false, wrote: false, stats: { requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0 } });
        return;
      }
      conns.set(m.id, c);
      void c.done.then(() => {
        conns.delete(m.id);
        port.postMessage({ op: 'closed', id: m.id, ...c.outcome() });
      });
    }
  });
}

const NO_PROVIDER: NbdExportProvider = {
  list: () => Promise.reject(new Error('not in a thread')),
  open: () => Promise.reject(new Error('not in a thread')),
};

/** A thread's log lines go to the main thread's logger of that connection. */
function threadLog(port: MessagePort, id: number): Logger {
  const at = (level: 'trace' | 'debug' | 'info' | 'warn' | 'error') => (obj: object, msg?: string): void => {
    let o: Record<string, unknown> = { ...obj };
    if (o.err instanceof Error) o.err = { message: o.err.message, code: (o.err as { code?: unknown }).code, stack: o.err.stack };
    try {
      port.postMessage({ op: 'log', id, level, obj: o, msg });
    } catch {
      o = { text: String(JSON.stringify(obj)) };
      port.postMessage({ op: 'log', id, level, obj: o, msg });
    }
  };
  const log: Logger = { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => log };
  return log;
}
