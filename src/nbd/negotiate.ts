import { isDeskfuseError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { BASE_ALLOCATION, CLIENT_FLAG, INFO, OPT, OPT_NAME, REP, REP_NAME, TX_FLAG } from './constants.js';
import type { NbdExport, NbdExportProvider, NbdOpenContext } from './export.js';
import { OptionFramer, type HandshakeItem } from './framer.js';
import {
  decodeOptionPayload, encodeExportNameReply, encodeGreeting, encodeOptionReply, encodeReplyPayload,
  type ExportRequest, type MetaContextRequest, type ReplyPayload,
} from './handshake.js';

/**
 * The server's side of option haggling (proto.md "Fixed newstyle negotiation", "Option types"): greet,
 * read the client flags, answer options one at a time until the client enters transmission
 * (NBD_OPT_GO acknowledged, or NBD_OPT_EXPORT_NAME) or the session ends. Socket-free: server.ts feeds
 * bytes in with push() and sends what comes out through `io.send`.
 */

/** The id of `base:allocation`, the one metadata context offered (ids are opaque to clients). */
export const ALLOCATION_CONTEXT_ID = 1;

/** What transmission starts with. */
export interface Negotiated {
  exp: NbdExport;
  structured: boolean;
  /** ALLOCATION_CONTEXT_ID when `base:allocation` was selected for this very export, else undefined. */
  allocationContext: number | undefined;
  flags: number;
  /** NBD_OPT_STARTTLS succeeded: everything after it went over TLS. */
  tls: boolean;
}

/**
 * proto.md "Server-side requirements": `on` is SELECTIVETLS with no TLS-only export (a client may
 * upgrade, or not); `required` is FORCEDTLS (every option but STARTTLS and ABORT is refused with
 * NBD_REP_ERR_TLS_REQD until TLS is up). Without TLS the server is in NOTLS mode.
 */
export type NbdTlsMode = 'on' | 'required';

export interface NegotiationTls {
  mode: NbdTlsMode;
  /**
   * Called right after NBD_REP_ACK to STARTTLS went out: upgrade the socket and resolve undefined once
   * the TLS handshake is done (bytes then come in through push() again, decrypted), or why not (the
   * handshake failed, or the socket had received bytes past the option in clear).
   */
  start(): Promise<string | undefined>;
}

export interface NegotiationIo {
  send(b: Buffer): void;
  /** Pause (false) or resume (true) reading from the socket. */
  flow(on: boolean): void;
  remote: string;
  log: Logger;
  provider: NbdExportProvider;
  /** The server's payload limit, advertised as the maximum in NBD_INFO_BLOCK_SIZE. */
  maxPayload: number;
  /** TLS offered (proto.md "TLS support"); absent: NOTLS mode. */
  tls?: NegotiationTls;
}

/** Options are ≤ 64 KiB (framer default); a client sending far more before our reply is paused. */
const PAUSE_AT = 128 * 1024;

/**
 * proto.md "Transmission flags". Read-only exports do not expose TRIM, WRITE_ZEROES or FUA (there is
 * nothing to write); SEND_DF only with structured replies, as the spec demands. CAN_MULTI_CONN only
 * where the export says a flush on one connection covers writes on all (NbdExport.multiConn).
 */
export function transmissionFlags(exp: NbdExport, structured: boolean): number {
  let f = TX_FLAG.HAS_FLAGS | TX_FLAG.SEND_FLUSH;
  f |= exp.readOnly ? TX_FLAG.READ_ONLY : TX_FLAG.SEND_FUA | TX_FLAG.SEND_TRIM | TX_FLAG.SEND_WRITE_ZEROES;
  if (structured) f |= TX_FLAG.SEND_DF;
  if (exp.multiConn) f |= TX_FLAG.CAN_MULTI_CONN;
  return f;
}

/** export.ts's mapping from provider error codes to option errors; anything else is ERR_UNKNOWN. */
const REP_OF_CODE: Partial<Record<ErrorCode, number>> = {
  DF_ERR_NBD_EXPORT_UNKNOWN: REP.ERR_UNKNOWN,
  DF_ERR_UNAUTHORIZED: REP.ERR_POLICY,
  DF_ERR_FORBIDDEN: REP.ERR_POLICY,
  DF_ERR_TOKEN_EXPIRED: REP.ERR_POLICY,
  DF_ERR_BAD_REQUEST: REP.ERR_INVALID,
};

/** Error strings go to an untrusted peer: no NUL, at most 4096 bytes (proto.md "Conventions"). */
export function wireMessage(s: string): string {
  return s.replace(/\0/g, ' ').slice(0, 1024);
}

type Step = { kind: 'more' } | { kind: 'end'; reason: string } | ({ kind: 'serve' } & Negotiated);
const MORE: Step = { kind: 'more' };

export class Negotiation {
  private readonly framer = new OptionFramer();
  private wake: (() => void) | undefined;
  private ended = false;
  /** The client shut its side down: options already received are still answered. */
  private eof = false;
  private noZeroes = false;
  /** proto.md: without fixed newstyle on both sides the server MUST be in NOTLS mode. */
  private fixed = false;
  private tlsUp = false;
  private structured = false;
  /** The export `base:allocation` was selected for by the last NBD_OPT_SET_META_CONTEXT. */
  private metaExport: string | undefined;

  constructor(private readonly io: NegotiationIo) {}

  push(b: Buffer): void {
    this.framer.push(b);
    if (this.framer.buffered > PAUSE_AT) this.io.flow(false);
    this.poke();
  }

  /** The socket is gone: run() returns undefined at its next step. */
  abort(): void {
    this.ended = true;
    this.poke();
  }

  /** No more bytes will come: run() answers what it has, then returns undefined. */
  endOfInput(): void {
    this.eof = true;
    this.poke();
  }

  /** Bytes received after the final option: the first transmission requests. */
  takeRest(): Buffer {
    return this.framer.takeRest();
  }

  /**
   * Haggles to the end. Resolves with what to serve, or undefined when the session ended in the
   * handshake (ABORT, a refused EXPORT_NAME, the socket closed). Rejects with DF_ERR_DECODE when the
   * stream itself is malformed (bad magic, bad client flags, oversized option): the caller hangs up.
   */
  async run(): Promise<Negotiated | undefined> {
    this.io.send(encodeGreeting());
    const first = await this.next();
    if (!first) return undefined;
    if (first.kind === 'client-flags') {
      this.noZeroes = (first.flags & CLIENT_FLAG.NO_ZEROES) !== 0;
      this.fixed = (first.flags & CLIENT_FLAG.FIXED_NEWSTYLE) !== 0;
    }
    if (this.io.tls?.mode === 'required' && !this.fixed) {
      // Such a client cannot upgrade; it could only ask for an export in clear, which is refused.
      this.io.log.debug({ reason: 'TLS is required and the client does not speak fixed newstyle' }, 'nbd handshake ended');
      return undefined;
    }
    for (;;) {
      const item = await this.next();
      if (!item) return undefined;
      if (item.kind !== 'option') continue; // client flags come once, first
      const step = await this.option(item.option, item.data);
      if (step.kind === 'end') {
        this.io.log.debug({ reason: step.reason }, 'nbd handshake ended');
        return undefined;
      }
      if (step.kind === 'serve') {
        const { kind: _k, ...n } = step;
        return n;
      }
    }
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async next(): Promise<HandshakeItem | undefined> {
    for (;;) {
      if (this.ended) return undefined;
      const item = this.framer.next();
      if (item) return item;
      if (this.eof) return undefined;
      this.io.flow(true);
      await new Promise<void>((resolve) => { this.wake = resolve; });
    }
  }

  private reply(option: number, p: ReplyPayload): void {
    this.io.send(encodeOptionReply(encodeReplyPayload(option, p)));
  }

  private fail(option: number, type: number, message: string): Step {
    this.io.log.debug({ opt: { option: OPT_NAME[option] ?? option, reply: REP_NAME[type] ?? type, message } }, 'nbd option refused');
    this.reply(option, { kind: 'error', type, message: wireMessage(message) });
    return MORE;
  }

  private async option(option: number, data: Buffer): Promise<Step> {
    // proto.md "NBD_OPT_SET_META_CONTEXT": replaces the selection, even when it fails.
    if (option === OPT.SET_META_CONTEXT) this.metaExport = undefined;
    if (this.io.tls?.mode === 'required' && !this.tlsUp && option !== OPT.STARTTLS && option !== OPT.ABORT) {
      // proto.md "FORCEDTLS mode": EXPORT_NAME cannot be refused with a reply, so the session ends.
      if (option === OPT.EXPORT_NAME) return { kind: 'end', reason: 'NBD_OPT_EXPORT_NAME before TLS (TLS is required)' };
      return this.fail(option, REP.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
    }
    let p;
    try {
      p = decodeOptionPayload({ option, data });
    } catch (err) {
      // EXPORT_NAME has no error reply: proto.md says terminate the session.
      if (option === OPT.EXPORT_NAME) return { kind: 'end', reason: `malformed export name: ${(err as Error).message}` };
      return this.fail(option, REP.ERR_INVALID, (err as Error).message);
    }
    this.io.log.debug({ opt: { option: OPT_NAME[option] ?? option, ...('name' in p ? { name: this.logName(p.name) } : {}) } }, 'nbd option');
    switch (p.kind) {
      case 'export-name': return this.exportName(p.name);
      case 'abort':
        // proto.md "NBD_OPT_ABORT": the server MUST reply with NBD_REP_ACK; the client then hangs up.
        this.reply(option, { kind: 'ack' });
        return { kind: 'end', reason: 'client sent NBD_OPT_ABORT' };
      case 'list': return this.list(option);
      case 'starttls': return this.startTls(option);
      case 'structured-reply':
        // proto.md "Fixed newstyle negotiation": a repeated state change MAY fail with ERR_INVALID.
        if (this.structured) return this.fail(option, REP.ERR_INVALID, 'structured replies are already negotiated');
        this.structured = true;
        this.reply(option, { kind: 'ack' });
        return MORE;
      case 'list-meta-context': case 'set-meta-context': return this.metaContext(option, p.kind === 'set-meta-context', p);
      case 'info': case 'go': return this.infoOrGo(option, p.kind === 'go', p);
      case 'unknown': return this.fail(option, REP.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  /** proto.md "TLS support", "NBD_OPT_STARTTLS". */
  private async startTls(option: number): Promise<Step> {
    const tls = this.io.tls;
    // proto.md "NOTLS mode": NBD_REP_ERR_POLICY. Exports are guarded by per-export secrets alone then.
    if (!tls || !this.fixed) return this.fail(option, REP.ERR_POLICY, 'TLS is not offered by this server');
    if (this.tlsUp) return this.fail(option, REP.ERR_INVALID, 'TLS is already negotiated');
    this.reply(option, { kind: 'ack' });
    // A client MUST wait for the reply before it sends more, so bytes already here came in clear
    // and would be taken for TLS-protected options (the STARTTLS injection of CVE-2021-3716 in
    // nbdkit): hang up rather than use them.
    if (this.framer.buffered > 0) return { kind: 'end', reason: `${this.framer.buffered} bytes sent in clear after NBD_OPT_STARTTLS` };
    const failed = await tls.start();
    if (failed !== undefined) return { kind: 'end', reason: failed };
    this.tlsUp = true;
    // "the server MUST NOT preserve any negotiation state ... issued before this command".
    this.structured = false;
    this.metaExport = undefined;
    this.io.log.debug({}, 'nbd tls up');
    return MORE;
  }

  /** Opens an export, or maps the provider's refusal to an option error (export.ts). */
  private async open(name: string, purpose: NbdOpenContext['purpose']): Promise<{ exp: NbdExport } | { type: number; message: string } | undefined> {
    let exp: NbdExport;
    try {
      exp = await this.io.provider.open(name, { remote: this.io.remote, purpose });
    } catch (err) {
      return this.refusal(err, { export: this.logName(name), purpose });
    }
    if (this.ended) {
      // The client left while the export opened: it was never used.
      await this.closeExport(exp, { clean: false, wrote: false });
      return undefined;
    }
    return { exp };
  }

  private logName(name: string): string {
    return this.io.provider.logName?.(name) ?? name;
  }

  private refusal(err: unknown, what: Record<string, unknown>): { type: number; message: string } {
    const type = isDeskfuseError(err) ? REP_OF_CODE[err.code] : undefined;
    if (type !== undefined) return { type, message: (err as Error).message };
    this.io.log.error({ err, ...what }, 'nbd export provider failed');
    // DeskfuseError messages are written for people; anything else may show internals.
    return { type: REP.ERR_UNKNOWN, message: isDeskfuseError(err) ? err.message : 'the export is not available' };
  }

  private async closeExport(exp: NbdExport, how: { clean: boolean; wrote: boolean }): Promise<void> {
    try {
      await exp.close(how);
    } catch (err) {
      this.io.log.warn({ err, export: exp.name }, 'nbd export close failed');
    }
  }

  private async exportName(name: string): Promise<Step> {
    const r = await this.open(name, 'serve');
    if (!r) return { kind: 'end', reason: 'socket closed' };
    // proto.md "NBD_OPT_EXPORT_NAME": no error reply exists; the server MUST terminate the session.
    if (!('exp' in r)) return { kind: 'end', reason: `export refused: ${r.message}` };
    const flags = transmissionFlags(r.exp, this.structured);
    this.io.send(encodeExportNameReply({ size: r.exp.size, flags }, this.noZeroes));
    return { kind: 'serve', exp: r.exp, structured: this.structured, allocationContext: this.contextFor(name), flags, tls: this.tlsUp };
  }

  private async list(option: number): Promise<Step> {
    let entries;
    try {
      entries = await this.io.provider.list();
    } catch (err) {
      const r = this.refusal(err, { option: 'LIST' });
      return this.fail(option, r.type, r.message);
    }
    if (this.ended) return { kind: 'end', reason: 'socket closed' };
    for (const e of entries) {
      try {
        this.reply(option, { kind: 'server', name: e.name, description: e.description });
      } catch (err) {
        this.io.log.warn({ err, export: e.name }, 'nbd export not listable (name or description too long)');
      }
    }
    this.reply(option, { kind: 'ack' });
    return MORE;
  }

  private contextFor(name: string): number | undefined {
    return this.metaExport === name ? ALLOCATION_CONTEXT_ID : undefined;
  }

  /**
   * proto.md "NBD_OPT_LIST_META_CONTEXT", "NBD_OPT_SET_META_CONTEXT", "The `base:` metadata namespace":
   * only `base:allocation` exists. Unknown namespaces and leaves are ignored; `base:` is a wildcard
   * when listing and selects nothing when setting; listing with no query lists everything. The export
   * name is only remembered (GO must name the same export); it is not opened here.
   */
  private metaContext(option: number, set: boolean, p: MetaContextRequest): Step {
    if (set) {
      if (!this.structured) return this.fail(option, REP.ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs structured replies first');
    }
    const matches = p.queries.length === 0 ? !set : p.queries.some((q) => q === BASE_ALLOCATION || (!set && q === 'base:'));
    if (matches) {
      if (set) this.metaExport = p.name;
      // Ids in list replies are reserved and SHOULD be zero.
      this.reply(option, { kind: 'meta-context', id: set ? ALLOCATION_CONTEXT_ID : 0, name: BASE_ALLOCATION });
    }
    this.reply(option, { kind: 'ack' });
    return MORE;
  }

  /**
   * proto.md "NBD_OPT_INFO and NBD_OPT_GO": NBD_INFO_EXPORT always; NAME and DESCRIPTION when asked;
   * BLOCK_SIZE always, since exports may need a minimum block above the default 1 ("Size constraints":
   * a server with non-default constraints SHOULD advertise them; unrequested info is allowed).
   */
  private async infoOrGo(option: number, go: boolean, p: ExportRequest): Promise<Step> {
    const r = await this.open(p.name, go ? 'serve' : 'info');
    if (!r) return { kind: 'end', reason: 'socket closed' };
    if (!('exp' in r)) return this.fail(option, r.type, r.message);
    const exp = r.exp;
    const flags = transmissionFlags(exp, this.structured);
    let infos: ReplyPayload[];
    try {
      const bs = exp.blockSize;
      infos = [
        { kind: 'info', info: 'export', size: exp.size, flags },
        ...(p.requests.includes(INFO.NAME) ? [{ kind: 'info', info: 'name', name: exp.name } as const] : []),
        ...(p.requests.includes(INFO.DESCRIPTION) ? [{ kind: 'info', info: 'description', description: exp.description } as const] : []),
        { kind: 'info', info: 'block-size', minimum: bs.minimum, preferred: bs.preferred, maximum: Math.min(bs.maximum, this.io.maxPayload) },
      ];
      // Encode all before sending any, so a bad export field cannot leave a half-sent reply.
      const frames = infos.map((i) => encodeOptionReply(encodeReplyPayload(option, i)));
      for (const f of frames) this.io.send(f);
    } catch (err) {
      this.io.log.error({ err, export: exp.name }, 'nbd export description cannot be encoded');
      await this.closeExport(exp, { clean: true, wrote: false });
      return this.fail(option, REP.ERR_UNKNOWN, 'the export is not available');
    }
    this.reply(option, { kind: 'ack' });
    if (!go) {
      await this.closeExport(exp, { clean: true, wrote: false });
      return MORE;
    }
    return { kind: 'serve', exp, structured: this.structured, allocationContext: this.contextFor(p.name), flags, tls: this.tlsUp };
  }
}
