import { BLKSIZE_DEFAULT, type Options, type RequestOptions } from './packet.js';
import type { BlockSource } from './source.js';

/**
 * One read transfer as a state machine: no sockets, no clocks of its own (TransferIo brings them),
 * so tests drive it packet by packet.
 *
 *   start ─▶ [OACK sent, wait ACK 0] ─▶ send window ─▶ ACK ─▶ … ─▶ ACK of the last block ─▶ done
 *
 * - RFC 1350 §2 lockstep is window 1; RFC 7440 §4 sends `windowsize` blocks, then waits for an ACK.
 *   An ACK for a block inside the window (a loss) restarts the window after it (go-back-N).
 * - Duplicate and late ACKs are ignored: answering them with data is the Sorcerer's Apprentice bug
 *   (RFC 1123 §4.2.3.1); only our own timer retransmits.
 * - Block numbers are 16 bits on the wire and wrap to 0 past 65535; ACKs map back to absolute numbers
 *   by their distance from the last acknowledged block.
 * - Retransmission timeout: it starts at the client's RFC 2349 `timeout` if it asked for one, else
 *   `timeoutMs`; then follows an RFC 6298-style smoothed RTT of clean windows (Karn: none after a
 *   retransmission), at least RTO_MIN_MS. Each timeout doubles it up to RTO_MAX_MS, which must exceed
 *   clients' own timers: atftp re-ACKs only after 5 s without any packet, so when both its ACK and
 *   its one "extra ACK" are lost, only our silence gets the transfer going again. `retries`
 *   timeouts in a row end the transfer.
 * - The hot path (an ACK) leaves the timer alone (except when the first RTT samples shrink the
 *   timeout a lot): the one timer checks the time of the last progress when it fires and re-arms
 *   itself for the remainder.
 */

export interface Limits {
  maxBlksize: number;
  maxWindow: number;
  retries: number;
  timeoutMs: number;
}
// 14 timeouts: from a 25 ms RTO, at least six waits of 6.4-8 s, each a chance for a client that
// re-ACKs only after 5 s of silence (atftp) to be heard; 10 left as few as two (a CI run at 5 % loss
// saw atftp stall on one).
export const DEFAULT_LIMITS: Limits = { maxBlksize: 65464, maxWindow: 64, retries: 14, timeoutMs: 1000 };
/** Floor of the adaptive timeout: on a LAN the RTT is well below it; a spurious resend is harmless. */
export const RTO_MIN_MS = 25;
export const RTO_MAX_MS = 8000;

export interface Negotiated {
  blksize: number;
  windowsize: number;
  /** The retransmission timeout until the first RTT sample. */
  timeoutMs: number;
  /** The OACK options, or undefined when nothing was accepted (then no OACK is sent, RFC 2347 §2). */
  oack: Options | undefined;
}

/**
 * RFC 2347 §2: answer only options the client asked for. blksize (RFC 2348) and windowsize (RFC 7440)
 * may be lowered to our limits; timeout (RFC 2349 §3) must be echoed unchanged; tsize (RFC 2349 §4) is
 * the file size — not offered in netascii mode (`size` undefined), whose size on the wire differs.
 */
export function negotiate(req: RequestOptions, limits: Limits, size: number | undefined): Negotiated {
  const oack: Options = [];
  let blksize = BLKSIZE_DEFAULT;
  let windowsize = 1;
  let timeoutMs = limits.timeoutMs;
  if (req.blksize !== undefined) {
    blksize = Math.min(req.blksize, limits.maxBlksize);
    oack.push(['blksize', String(blksize)]);
  }
  // An empty file's tsize is left out: curl (7.88, tftp_parse_option_ack) fails on "tsize 0".
  if (req.tsize !== undefined && size !== undefined && size > 0) oack.push(['tsize', String(size)]);
  if (req.timeout !== undefined) {
    timeoutMs = req.timeout * 1000;
    oack.push(['timeout', String(req.timeout)]);
  }
  if (req.windowsize !== undefined) {
    windowsize = Math.min(req.windowsize, limits.maxWindow);
    oack.push(['windowsize', String(windowsize)]);
  }
  return { blksize, windowsize, timeoutMs, oack: oack.length > 0 ? oack : undefined };
}

export interface TransferIo {
  send(pkt: Buffer): void;
  /** Milliseconds, monotonic. */
  now(): number;
  /** (Re)arm the transfer's single timer to call onTimer() after ms. */
  arm(ms: number): void;
}

export type Outcome =
  | { ok: true; bytes: number }
  /** notify: the ERROR to send the client, if it should hear about it. */
  | { ok: false; bytes: number; error: string; notify?: { code: number; message: string } };

export class Transfer {
  private acked = 0;           // absolute number of the last acknowledged block
  private next = 1;            // absolute number of the next block to send
  private oackPending: boolean;
  private retries = 0;
  private rto: number;
  private srtt = -1;
  private rttvar = 0;
  private lastProgress = 0;
  private windowAt = 0;        // when the current window was first sent
  private clean = true;        // no retransmission in the current window (Karn's rule)
  private waiting = false;     // the next packet is being read from disk
  private armedUntil = 0;      // when the timer fires
  private ended = false;

  constructor(
    private readonly src: BlockSource,
    private readonly neg: Negotiated,
    private readonly io: TransferIo,
    private readonly oackPacket: Buffer | undefined,
    private readonly retryLimit: number,
    private readonly onEnd: (o: Outcome) => void,
  ) {
    this.oackPending = oackPacket !== undefined;
    this.rto = neg.timeoutMs;
  }

  get done(): boolean { return this.ended; }

  start(): void {
    this.lastProgress = this.windowAt = this.io.now();
    if (this.oackPacket) this.io.send(this.oackPacket);
    else this.pump();
    this.arm(this.rto);
  }

  /** An ACK from the client's TID (RFC 1350 §4). */
  onAck(wire: number): void {
    if (this.ended) return;
    const now = this.io.now();
    if (this.oackPending) {
      if (wire !== 0) return; // RFC 2347 §2: the OACK is acknowledged with block 0
      this.oackPending = false;
    } else {
      const delta = (wire - this.acked) & 0xffff;
      if (delta === 0 || delta > this.next - 1 - this.acked) return; // duplicate or late: ignore
      this.acked += delta;
    }
    const rtt = now - this.windowAt;
    this.retries = 0;
    this.lastProgress = this.windowAt = now;
    if (this.clean) this.sample(rtt);
    this.clean = true;
    const last = this.src.last;
    if (last !== undefined && this.acked >= last) return this.end({ ok: true, bytes: this.src.bytes ?? 0 });
    this.src.release(this.acked + 1);
    if (this.acked < this.next - 1) {
      // RFC 7440 §4: the client acknowledged part of the window, so the rest was lost: resend after it.
      this.next = this.acked + 1;
      this.clean = false;
    }
    this.pump();
  }

  /** An ERROR from the client ends the transfer without an answer (RFC 1350 §7); e.g. the PXE tsize probe. */
  onPeerError(code: number, message: string): void {
    if (this.ended) return;
    this.end({ ok: false, bytes: this.acked * this.neg.blksize, error: `client sent ERROR ${code}: ${message}` });
  }

  onTimer(): void {
    if (this.ended) return;
    const now = this.io.now();
    const due = this.lastProgress + this.rto;
    if (now < due) return this.arm(due - now);
    this.lastProgress = now;
    if (this.waiting) return this.arm(this.rto); // our disk, not the network
    if (++this.retries > this.retryLimit) {
      return this.end({
        ok: false, bytes: this.acked * this.neg.blksize, error: `timed out after ${this.retryLimit} retransmissions`,
        notify: { code: 0, message: 'timed out' },
      });
    }
    this.rto = Math.min(this.rto * 2, RTO_MAX_MS);
    this.clean = false;
    if (this.oackPending) this.io.send(this.oackPacket!);
    else {
      this.next = this.acked + 1;
      this.pump();
    }
    this.arm(this.rto);
  }

  private arm(ms: number): void {
    this.armedUntil = this.io.now() + ms;
    this.io.arm(ms);
  }

  /** Stop now (server closing); tells the client. */
  abort(reason: string): void {
    if (this.ended) return;
    this.end({ ok: false, bytes: this.acked * this.neg.blksize, error: reason, notify: { code: 0, message: reason } });
  }

  /** Send until the window is full or the file ends; wait for the disk if read-ahead fell behind. */
  private pump(): void {
    if (this.waiting) return;
    const limit = this.acked + this.neg.windowsize;
    while (this.next <= limit) {
      const last = this.src.last;
      if (last !== undefined && this.next > last) return;
      const pkt = this.src.packet(this.next);
      if (pkt === undefined) {
        this.waiting = true;
        this.src.load(this.next).then(
          () => { this.waiting = false; if (!this.ended) this.pump(); },
          (err: unknown) => this.end({
            ok: false, bytes: this.acked * this.neg.blksize, error: `read failed: ${(err as Error).message}`,
            notify: { code: 0, message: 'read error' },
          }),
        );
        return;
      }
      this.io.send(pkt);
      this.next++;
    }
  }

  /** RFC 6298 §2 smoothing; the timeout stays within [RTO_MIN_MS, RTO_MAX_MS]. */
  private sample(r: number): void {
    if (this.srtt < 0) { this.srtt = r; this.rttvar = r / 2; }
    else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - r);
      this.srtt = 0.875 * this.srtt + 0.125 * r;
    }
    this.rto = Math.min(Math.max(this.srtt + 4 * this.rttvar, RTO_MIN_MS), RTO_MAX_MS);
    // Re-arm only when the timer would fire much too late (the first samples shrink the timeout);
    // small changes wait for the timer, which re-arms itself for the remainder.
    if (this.lastProgress + 2 * this.rto < this.armedUntil) this.arm(this.rto);
  }

  private end(o: Outcome): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(o);
  }
}
