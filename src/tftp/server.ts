import dgram from 'node:dgram';
import { open, stat, realpath } from 'node:fs/promises';
import { isIPv6 } from 'node:net';
import { performance } from 'node:perf_hooks';
import { dfError } from '../errors.js';
import type { Logger } from '../log.js';
import { decode, encode, encodeError, ERR, OP, requestOptions } from './packet.js';
import { openInRoot, safeRelative } from './path.js';
import { TFTP_DEFAULTS, TransferSlots } from './slots.js';
import { FileBlocks, netasciiReader, octetReader, type ByteReader } from './source.js';
import { DEFAULT_LIMITS, negotiate, Transfer, type Limits, type Outcome } from './transfer.js';

/**
 * Read-only TFTP server (RFC 1350 with RFC 2347/2348/2349/7440 options): the socket adapter around
 * packet.ts (codec), path.ts (root confinement), source.ts (read-ahead) and transfer.ts (state machine).
 * Requests arrive on `port`; each transfer gets its own socket, i.e. its own TID (RFC 1350 §4).
 */

export interface TftpEvent {
  phase: 'tftp';
  ip: string;
  port: number;
  file: string;
  kind: 'start' | 'done' | 'error';
  bytes?: number;
  ms?: number;
  error?: string;
}

export interface TftpOptions {
  host: string;
  /** Default 69; 0 picks a free port. */
  port?: number;
  /** Read-only root; files are served from here. */
  root: string;
  log: Logger;
  onEvent?: (e: TftpEvent) => void;
  /** Largest blksize offered (RFC 2348); default 65464. */
  maxBlksize?: number;
  /** Largest windowsize offered (RFC 7440); default 64. Bounds memory: 2 · window · blksize per transfer. */
  maxWindow?: number;
  /** Retransmission timeouts in a row (each twice the last, up to 8 s) before a transfer is abandoned; default 14. */
  retries?: number;
  /** Retransmission timeout until the RTT is measured, unless the client negotiates `timeout`; default 1000. */
  timeoutMs?: number;
  /** Transfers running at once; more wait in line (slots.ts). Default 32 (config tftp.maxTransfers). */
  maxTransfers?: number;
  /** Requests waiting for a slot; past it an RRQ is answered ERROR 0 "server busy". Default 1000 (config tftp.maxQueued). */
  maxQueued?: number;
  /**
   * Files the server makes rather than reads from `root` (the Secure Boot chain's GRUB config and the
   * boot stage's files: server/services/netboot.ts). Asked first for every request with the name
   * confined like a root path (no `..`); null means "look in the root".
   */
  generated?: (file: string, ip: string) => Promise<GeneratedFile | null>;
}

/** What `generated` answers: bytes made for this request, or a file the server itself names (trusted path). */
export type GeneratedFile = { bytes: Buffer } | { path: string };

type Opened =
  | { ok: true; size: number; reader: ByteReader; close(): Promise<void> }
  | { ok: false; code: number; reason: string };

export interface TftpStats {
  active: number;
  queued: number;
  /** RRQs answered "server busy" since start. */
  refused: number;
  /** Most transfers that ran at once since start. */
  peakActive: number;
}

export interface TftpServer {
  port: number;
  stats(): TftpStats;
  close(): Promise<void>;
}

/**
 * dgram resolves the address of every send through dns.lookup (a tick later); peers are always IP
 * literals of the socket's own family, so answer at once.
 */
const literalLookup = (family: 4 | 6) =>
  (host: string, _opts: unknown, cb: (err: null, address: string, family: number) => void): void => cb(null, host, family);

function bindSocket(sock: dgram.Socket, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    sock.once('error', onError);
    sock.bind(port, host, () => { sock.off('error', onError); resolve(); });
  });
}

/** A waiting client silent this long gave up (clients retransmit an unanswered RRQ every 1-8 s). */
const STALE_MS = 20_000;

export async function startTftp(opts: TftpOptions): Promise<TftpServer> {
  const log = opts.log;
  const maxActive = opts.maxTransfers ?? TFTP_DEFAULTS.maxTransfers;
  const maxQueued = opts.maxQueued ?? TFTP_DEFAULTS.maxQueued;
  if (!Number.isInteger(maxActive) || maxActive < 1) throw dfError('DF_ERR_CONFIG', `tftp.maxTransfers: expected an integer of at least 1, got ${maxActive}`, { field: 'tftp.maxTransfers' });
  if (!Number.isInteger(maxQueued) || maxQueued < 0) throw dfError('DF_ERR_CONFIG', `tftp.maxQueued: expected an integer of at least 0, got ${maxQueued}`, { field: 'tftp.maxQueued' });
  const limits: Limits = {
    maxBlksize: opts.maxBlksize ?? DEFAULT_LIMITS.maxBlksize,
    maxWindow: Math.min(opts.maxWindow ?? DEFAULT_LIMITS.maxWindow, 1024),
    retries: opts.retries ?? DEFAULT_LIMITS.retries,
    timeoutMs: opts.timeoutMs ?? DEFAULT_LIMITS.timeoutMs,
  };
  let rootReal: string;
  try {
    rootReal = await realpath(opts.root);
    if (!(await stat(rootReal)).isDirectory()) throw new Error('not a directory');
  } catch (err) {
    throw dfError('DF_ERR_CONFIG', `tftp root ${opts.root} is not a readable directory`, { field: 'root', root: opts.root }, err);
  }
  const type = isIPv6(opts.host) ? 'udp6' : 'udp4';
  const lookup = literalLookup(type === 'udp6' ? 6 : 4) as never;
  const main = dgram.createSocket({ type, lookup });
  try {
    await bindSocket(main, opts.port ?? 69, opts.host);
  } catch (err) {
    main.close();
    throw dfError('DF_ERR_CONFIG', `tftp cannot listen on ${opts.host}:${opts.port ?? 69}: ${(err as Error).message}`, { field: 'tftp.listen' }, err);
  }
  const port = main.address().port;
  const sessions = new Set<{ abort(reason: string): void }>();
  const pending = new Set<Promise<void>>();
  const closingSockets = new Set<Promise<void>>();
  let closing = false;
  const emit = (e: Omit<TftpEvent, 'phase'>): void => opts.onEvent?.({ phase: 'tftp', ...e });
  const slots = new TransferSlots({ maxActive, maxQueued, staleMs: STALE_MS });
  /** How to start each waiting request, by client address:port. */
  const waiting = new Map<string, () => void>();
  /** A transfer ended: its slot goes to the next one in line. */
  const release = (): void => {
    const { start, dropped } = slots.release(performance.now());
    for (const k of dropped) {
      waiting.delete(k);
      log.debug({ tftp: { client: k } }, 'tftp waiting request dropped: the client went silent');
    }
    if (start === undefined || closing) return;
    const go = waiting.get(start);
    waiting.delete(start);
    go?.();
  };

  main.on('error', (err) => log.error({ err }, 'tftp socket error'));
  main.on('message', (msg, rinfo) => {
    if (closing) return;
    let p;
    try {
      p = decode(msg);
    } catch (err) {
      log.debug({ tftp: { ip: rinfo.address, port: rinfo.port, error: (err as Error).message } }, 'tftp malformed packet dropped');
      return;
    }
    const reply = (code: number, message: string): void => {
      if (!closing) main.send(encodeError(code, message), rinfo.port, rinfo.address);
    };
    if (p.op === 'error') return; // never answer an ERROR (RFC 1350 §7)
    if (p.op === 'wrq') {
      log.info({ tftp: { ip: rinfo.address, file: p.filename } }, 'tftp write refused');
      return reply(ERR.ACCESS, 'read-only server');
    }
    if (p.op !== 'rrq') return reply(ERR.UNKNOWN_TID, 'unknown transfer ID');
    if (p.mode !== 'octet' && p.mode !== 'netascii') return reply(ERR.ILLEGAL_OP, `unsupported mode ${p.mode}`);
    const rrq = p;
    const start = (): void => {
      let released = false;
      const done = (): void => {
        if (released) return;
        released = true;
        release();
      };
      const job = serve(rrq.filename, rrq.mode === 'netascii', requestOptions(rrq.options), rinfo.address, rinfo.port, reply, done)
        .catch((err: unknown) => {
          log.error({ err, tftp: { ip: rinfo.address, file: rrq.filename } }, 'tftp request failed');
          done();
        });
      pending.add(job);
      void job.finally(() => pending.delete(job));
    };
    const client = `${rinfo.address}:${rinfo.port}`;
    switch (slots.request(client, performance.now())) {
      case 'start':
        return start();
      case 'queued':
        waiting.set(client, start);
        return log.debug({ tftp: { ip: rinfo.address, port: rinfo.port, file: rrq.filename, queued: slots.queued } }, 'tftp request waits for a transfer slot');
      case 'duplicate':
        return; // a retransmission of a request already in line
      case 'refused':
        log.warn({ tftp: { ip: rinfo.address, file: rrq.filename }, active: slots.active, queued: slots.queued }, 'tftp request refused: every slot taken and the line full');
        emit({ ip: rinfo.address, port: rinfo.port, file: rrq.filename, kind: 'error', error: 'server busy' });
        // Code 0 (not defined): no RFC 1350 code means "busy"; the message says what to do.
        return reply(ERR.UNDEFINED, `server busy: ${slots.active} transfers running, ${slots.queued} waiting; try again later`);
    }
  });

  /** The request's bytes: a generated file, else the file in the root (path.ts confines it). */
  async function openRequested(file: string, ip: string, tlog: Logger): Promise<Opened> {
    const rel = safeRelative(file);
    let g: GeneratedFile | null = null;
    if (opts.generated && rel) {
      try {
        g = await opts.generated(rel, ip);
      } catch (err) {
        tlog.error({ err }, 'tftp generated file failed');
        return { ok: false, code: ERR.UNDEFINED, reason: `generating ${rel} failed: ${(err as Error).message}` };
      }
    }
    if (g && 'bytes' in g) {
      const bytes = g.bytes;
      let pos = 0;
      const reader: ByteReader = async (dst, off, n) => {
        const got = bytes.copy(dst, off, pos, Math.min(bytes.length, pos + n));
        pos += got;
        return got;
      };
      return { ok: true, size: bytes.length, reader, close: async () => {} };
    }
    if (g) {
      const fh = await open(g.path, 'r').catch(() => undefined);
      const st = await fh?.stat().catch(() => undefined);
      if (!fh || !st?.isFile()) {
        await fh?.close();
        return { ok: false, code: ERR.NOT_FOUND, reason: `${g.path} is missing` };
      }
      return { ok: true, size: st.size, reader: octetReader(fh), close: () => fh.close() };
    }
    const f = await openInRoot(rootReal, file);
    return f.ok ? { ok: true, size: f.size, reader: octetReader(f.fh), close: () => f.fh.close() } : f;
  }

  async function serve(
    file: string, netascii: boolean, req: ReturnType<typeof requestOptions>, ip: string, peerPort: number,
    reply: (code: number, message: string) => void, done: () => void,
  ): Promise<void> {
    const t0 = performance.now();
    const tlog = log.child({ tftp: { ip, port: peerPort, file } });
    emit({ ip, port: peerPort, file, kind: 'start' });
    const r = await openRequested(file, ip, tlog);
    if (!r.ok) {
      if (r.code === ERR.ACCESS) tlog.warn({ reason: r.reason }, 'tftp path refused');
      else if (r.code === ERR.NOT_FOUND) tlog.info({ reason: r.reason }, 'tftp file not found');
      reply(r.code, r.code === ERR.ACCESS ? 'access violation' : r.code === ERR.NOT_FOUND ? 'file not found' : 'server error');
      emit({ ip, port: peerPort, file, kind: 'error', error: r.reason, ms: performance.now() - t0 });
      return done();
    }
    const neg = negotiate(req, limits, netascii ? undefined : r.size);
    const sock = dgram.createSocket({ type, lookup });
    let timer: NodeJS.Timeout | undefined;
    let resolveClosed!: () => void;
    const closed = new Promise<void>((res) => { resolveClosed = res; });
    closingSockets.add(closed);
    void closed.then(() => closingSockets.delete(closed));
    const finish = (o: Outcome): void => {
      clearTimeout(timer);
      if (!o.ok && o.notify) sock.send(encodeError(o.notify.code, o.notify.message), peerPort, ip);
      const ms = performance.now() - t0;
      if (o.ok) {
        tlog.info({ bytes: o.bytes, ms: Math.round(ms), blksize: neg.blksize, windowsize: neg.windowsize }, 'tftp transfer done');
        emit({ ip, port: peerPort, file, kind: 'done', bytes: o.bytes, ms });
      } else {
        tlog.debug({ bytes: o.bytes, error: o.error }, 'tftp transfer ended');
        emit({ ip, port: peerPort, file, kind: 'error', bytes: o.bytes, ms, error: o.error });
      }
      sessions.delete(session);
      done();
      // Close after the ERROR above left; the file only once no send can reference its buffers.
      setImmediate(() => sock.close(() => { void r.close().finally(resolveClosed); }));
    };
    const source = new FileBlocks(netascii ? netasciiReader(r.reader) : r.reader, neg.blksize, neg.windowsize);
    const oack = neg.oack ? encode({ op: 'oack', options: neg.oack }) : undefined;
    const transfer = new Transfer(source, neg, {
      send: (pkt) => { sock.send(pkt, peerPort, ip); },
      now: () => performance.now(),
      arm: (ms) => { clearTimeout(timer); timer = setTimeout(() => transfer.onTimer(), ms); },
    }, oack, limits.retries, finish);
    const session = { abort: (reason: string) => transfer.abort(reason) };
    sessions.add(session);
    sock.on('error', (err) => tlog.debug({ err }, 'tftp transfer socket error'));
    sock.on('message', (msg, from) => {
      if (from.port !== peerPort || from.address !== ip) {
        // RFC 1350 §4: a packet from another TID gets ERROR 5 and does not disturb the transfer.
        sock.send(encodeError(ERR.UNKNOWN_TID, 'unknown transfer ID'), from.port, from.address);
        return;
      }
      // Fast path for the packet that drives the transfer: ACK is exactly 4 bytes.
      if (msg.length === 4 && msg[0] === 0 && msg[1] === OP.ACK) return transfer.onAck(msg.readUInt16BE(2));
      let p;
      try {
        p = decode(msg);
      } catch (err) {
        tlog.debug({ error: (err as Error).message }, 'tftp malformed packet dropped');
        return;
      }
      if (p.op === 'error') transfer.onPeerError(p.code, p.message);
      else tlog.debug({ op: p.op }, 'tftp unexpected packet dropped');
    });
    try {
      await bindSocket(sock, 0, opts.host);
    } catch (err) {
      tlog.error({ err }, 'tftp cannot open a transfer socket');
      reply(ERR.UNDEFINED, 'server error');
      return finish({ ok: false, bytes: 0, error: (err as Error).message });
    }
    if (closing) return transfer.abort('server closing');
    transfer.start();
  }

  return {
    port,
    stats: () => ({ active: slots.active, queued: slots.queued, refused: slots.refused, peakActive: slots.peakActive }),
    async close(): Promise<void> {
      if (closing) return;
      closing = true;
      slots.drain();
      waiting.clear();
      await new Promise<void>((res) => main.close(() => res()));
      await Promise.allSettled([...pending]);
      for (const s of [...sessions]) s.abort('server closing');
      await Promise.all([...closingSockets]);
    },
  };
}
