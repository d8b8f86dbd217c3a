import { dfError } from '../errors.js';
import { Reader, Writer } from '../wire/bytes.js';
import { CLIENT_FLAG, HS_FLAG, IHAVEOPT, INFO, NBDMAGIC, OPT, REP, REP_ERR_BIT, REPLY_MAGIC } from './constants.js';
import { be64, checkUint, magic64, str, strBytes } from './fields.js';

/**
 * NBD fixed newstyle handshake codec (proto.md "Newstyle negotiation", "Fixed newstyle negotiation",
 * "Option types", "Option reply types"), pure.
 *
 *   S: NBDMAGIC(8) IHAVEOPT(8) handshake flags(2)                 greeting, 18 bytes
 *   C: client flags(4)
 *   C: IHAVEOPT(8) option(4) length(4) data(length)               option request, repeated
 *   S: 0x3e889045565a9(8) option(4) type(4) length(4) data(length) option reply (not to EXPORT_NAME)
 *   S: size(8) transmission flags(2) [124 zeroes unless NO_ZEROES] reply to NBD_OPT_EXPORT_NAME
 *
 * Messages decode whole (the framers in framer.ts cut them out of a stream). Option payloads decode
 * separately: a payload error leaves the framing intact, so a server answers NBD_REP_ERR_INVALID.
 */

export const GREETING_SIZE = 18;
export const OPTION_HEADER = 16;
export const OPTION_REPLY_HEADER = 20;
const EXPORT_ZEROES = 124;

// ——— greeting and client flags ———

export function encodeGreeting(handshakeFlags: number = HS_FLAG.FIXED_NEWSTYLE | HS_FLAG.NO_ZEROES): Buffer {
  checkUint(handshakeFlags, 16, 'handshake flags');
  return new Writer(GREETING_SIZE).bytes(be64(NBDMAGIC)).bytes(be64(IHAVEOPT)).u16(handshakeFlags).done();
}

/** Returns the handshake flags. An oldstyle server (proto.md "Oldstyle negotiation") is refused. */
export function decodeGreeting(buf: Buffer): number {
  const r = new Reader(buf, 'nbd greeting');
  magic64(r, 'NBDMAGIC', NBDMAGIC);
  magic64(r, 'IHAVEOPT', IHAVEOPT);
  const flags = r.u16('handshake flags');
  r.end();
  return flags;
}

export function encodeClientFlags(flags: number): Buffer {
  checkUint(flags, 32, 'client flags');
  return new Writer(4).u32(flags).done();
}

/**
 * proto.md "Client flags": the server MUST drop the connection on an unknown flag or one it did not
 * advertise, so both are decode errors here.
 */
export function decodeClientFlags(buf: Buffer, advertised: number = HS_FLAG.FIXED_NEWSTYLE | HS_FLAG.NO_ZEROES): number {
  const r = new Reader(buf, 'nbd client flags');
  const flags = r.u32('client flags');
  r.end();
  const known = CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES;
  if ((flags & ~known) !== 0) r.fail('client flags', `unknown bits 0x${(flags & ~known).toString(16)}`, 0);
  if (flags & CLIENT_FLAG.NO_ZEROES && !(advertised & HS_FLAG.NO_ZEROES)) r.fail('client flags', 'NO_ZEROES was not advertised', 0);
  return flags;
}

// ——— option requests and replies (framing) ———

export interface OptionRequest {
  option: number;
  data: Buffer;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export function encodeOption(o: OptionRequest): Buffer {
  checkUint(o.option, 32, 'option');
  checkUint(o.data.length, 32, 'option length');
  return new Writer(OPTION_HEADER + o.data.length).bytes(be64(IHAVEOPT)).u32(o.option).u32(o.data.length).bytes(o.data).done();
}

export function decodeOption(buf: Buffer): OptionRequest {
  const r = new Reader(buf, 'nbd option');
  magic64(r, 'IHAVEOPT', IHAVEOPT);
  const option = r.u32('option');
  const len = r.u32('option length');
  const data = r.bytes(len, 'option data');
  r.end();
  return { option, data };
}

export function encodeOptionReply(o: OptionReply): Buffer {
  checkUint(o.option, 32, 'option');
  checkUint(o.type, 32, 'reply type');
  checkUint(o.data.length, 32, 'reply length');
  return new Writer(OPTION_REPLY_HEADER + o.data.length).bytes(be64(REPLY_MAGIC)).u32(o.option).u32(o.type).u32(o.data.length).bytes(o.data).done();
}

export function decodeOptionReply(buf: Buffer): OptionReply {
  const r = new Reader(buf, 'nbd option reply');
  magic64(r, 'reply magic', REPLY_MAGIC);
  const option = r.u32('option');
  const type = r.u32('reply type');
  const len = r.u32('reply length');
  const data = r.bytes(len, 'reply data');
  r.end();
  return { option, type, data };
}

/** A reply is final when it is ACK or an error (proto.md "Fixed newstyle negotiation"). */
export const isFinalReply = (type: number): boolean => type === REP.ACK || (type & REP_ERR_BIT) !== 0;

// ——— option payloads (proto.md "Option types") ———

/** NBD_OPT_INFO / NBD_OPT_GO data: export name and the NBD_INFO_* items asked for. */
export interface ExportRequest {
  name: string;
  requests: number[];
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export type OptionPayload =
  | { kind: 'export-name'; name: string }
  | ({ kind: 'info' | 'go' } & ExportRequest)
  | ({ kind: 'list-meta-context' | 'set-meta-context' } & MetaContextRequest)
  | { kind: 'abort' | 'list' | 'starttls' | 'structured-reply' }
  | { kind: 'unknown'; option: number; data: Buffer };

const EMPTY_KINDS = { [OPT.ABORT]: 'abort', [OPT.LIST]: 'list', [OPT.STARTTLS]: 'starttls', [OPT.STRUCTURED_REPLY]: 'structured-reply' } as const;

/**
 * Decodes an option's data. Throws DF_ERR_DECODE when it is malformed — including data sent with an
 * option that takes none — which a server answers with NBD_REP_ERR_INVALID. NBD_OPT_ABORT ignores
 * its data, as proto.md asks.
 */
export function decodeOptionPayload(o: OptionRequest): OptionPayload {
  const r = new Reader(o.data, `nbd option ${o.option} data`);
  switch (o.option) {
    case OPT.EXPORT_NAME: return { kind: 'export-name', name: str(r, o.data.length, 'export name') };
    case OPT.INFO: case OPT.GO: {
      const nameLen = r.u32('name length');
      // "MUST be no larger than the option data length - 6"
      if (nameLen > o.data.length - 6) r.fail('name length', `${nameLen} exceeds option length ${o.data.length} - 6`, 0);
      const name = str(r, nameLen, 'export name');
      const n = r.u16('information request count');
      const requests: number[] = [];
      for (let i = 0; i < n; i++) requests.push(r.u16(`information request ${i}`));
      r.end();
      return { kind: o.option === OPT.GO ? 'go' : 'info', name, requests };
    }
    case OPT.LIST_META_CONTEXT: case OPT.SET_META_CONTEXT: {
      const name = str(r, r.u32('name length'), 'export name');
      const n = r.u32('query count');
      const queries: string[] = [];
      for (let i = 0; i < n; i++) queries.push(str(r, r.u32(`query ${i} length`), `query ${i}`));
      r.end();
      return { kind: o.option === OPT.SET_META_CONTEXT ? 'set-meta-context' : 'list-meta-context', name, queries };
    }
    case OPT.ABORT: return { kind: 'abort' };
    case OPT.LIST: case OPT.STARTTLS: case OPT.STRUCTURED_REPLY:
      r.end();
      return { kind: EMPTY_KINDS[o.option] };
    default: return { kind: 'unknown', option: o.option, data: o.data };
  }
}

const KIND_OPT = {
  'export-name': OPT.EXPORT_NAME, info: OPT.INFO, go: OPT.GO, 'list-meta-context': OPT.LIST_META_CONTEXT,
  'set-meta-context': OPT.SET_META_CONTEXT, abort: OPT.ABORT, list: OPT.LIST, starttls: OPT.STARTTLS, 'structured-reply': OPT.STRUCTURED_REPLY,
} as const;

export function encodeOptionPayload(p: OptionPayload): OptionRequest {
  switch (p.kind) {
    case 'unknown': return { option: p.option, data: p.data };
    case 'export-name': return { option: OPT.EXPORT_NAME, data: strBytes(p.name, 'export name') };
    case 'info': case 'go': {
      const name = strBytes(p.name, 'export name');
      if (p.requests.length > 0xffff) throw dfError('DF_ERR_BAD_REQUEST', 'nbd: too many information requests', { field: 'requests' });
      p.requests.forEach((q, i) => checkUint(q, 16, `information request ${i}`));
      const w = new Writer(4 + name.length + 2 + 2 * p.requests.length).u32(name.length).bytes(name).u16(p.requests.length);
      for (const q of p.requests) w.u16(q);
      return { option: KIND_OPT[p.kind], data: w.done() };
    }
    case 'list-meta-context': case 'set-meta-context': {
      const name = strBytes(p.name, 'export name');
      const qs = p.queries.map((q, i) => strBytes(q, `query ${i}`));
      const w = new Writer(8 + name.length + qs.reduce((s, q) => s + 4 + q.length, 0)).u32(name.length).bytes(name).u32(qs.length);
      for (const q of qs) w.u32(q.length).bytes(q);
      return { option: KIND_OPT[p.kind], data: w.done() };
    }
    default: return { option: KIND_OPT[p.kind], data: Buffer.alloc(0) };
  }
}

// ——— option reply payloads (proto.md "Option reply types") ———

export type Info =
  | { info: 'export'; size: number; flags: number }
  | { info: 'name'; name: string }
  | { info: 'description'; description: string }
  | { info: 'block-size'; minimum: number; preferred: number; maximum: number }
  | { info: 'unknown'; type: number; data: Buffer };

export type ReplyPayload =
  | { kind: 'ack' }
  | { kind: 'server'; name: string; description: string }
  | ({ kind: 'info' } & Info)
  | { kind: 'meta-context'; id: number; name: string }
  | { kind: 'error'; type: number; message: string }
  | { kind: 'unknown'; type: number; data: Buffer };

/** Decodes a reply's data by its type. Error messages are strings too (proto.md "Option reply types"). */
export function decodeReplyPayload(o: OptionReply): ReplyPayload {
  const r = new Reader(o.data, `nbd reply ${o.type} data`);
  let p: ReplyPayload;
  if (o.type & REP_ERR_BIT) p = { kind: 'error', type: o.type, message: str(r, o.data.length, 'error message') };
  else if (o.type === REP.ACK) p = { kind: 'ack' };
  else if (o.type === REP.SERVER) {
    const nameLen = r.u32('name length');
    if (nameLen > o.data.length - 4) r.fail('name length', `${nameLen} exceeds reply length ${o.data.length} - 4`, 0);
    p = { kind: 'server', name: str(r, nameLen, 'export name'), description: str(r, r.remaining, 'description') };
  } else if (o.type === REP.INFO) p = { kind: 'info', ...decodeInfo(r, o.data.length) };
  else if (o.type === REP.META_CONTEXT) p = { kind: 'meta-context', id: r.u32('context id'), name: str(r, r.remaining, 'context name') };
  else return { kind: 'unknown', type: o.type, data: o.data };
  r.end();
  return p;
}

function decodeInfo(r: Reader, len: number): Info {
  const type = r.u16('information type');
  const fixed = (want: number) => { if (len !== want) r.fail('reply length', `${len} for information type ${type}, expected ${want}`, 0); };
  switch (type) {
    case INFO.EXPORT: fixed(12); return { info: 'export', size: r.u64('export size'), flags: r.u16('transmission flags') };
    case INFO.NAME: return { info: 'name', name: str(r, r.remaining, 'name') };
    case INFO.DESCRIPTION: return { info: 'description', description: str(r, r.remaining, 'description') };
    case INFO.BLOCK_SIZE: fixed(14); return { info: 'block-size', minimum: r.u32('minimum block size'), preferred: r.u32('preferred block size'), maximum: r.u32('maximum payload size') };
    default: return { info: 'unknown', type, data: r.bytes(r.remaining, 'information') };
  }
}

function encodeInfo(i: Info): Buffer {
  switch (i.info) {
    case 'export':
      checkUint(i.size, 64, 'export size'); checkUint(i.flags, 16, 'transmission flags');
      return new Writer(12).u16(INFO.EXPORT).u64(i.size).u16(i.flags).done();
    case 'name': { const s = strBytes(i.name, 'name'); return new Writer(2 + s.length).u16(INFO.NAME).bytes(s).done(); }
    case 'description': { const s = strBytes(i.description, 'description'); return new Writer(2 + s.length).u16(INFO.DESCRIPTION).bytes(s).done(); }
    case 'block-size':
      for (const f of ['minimum', 'preferred', 'maximum'] as const) checkUint(i[f], 32, `${f} block size`);
      return new Writer(14).u16(INFO.BLOCK_SIZE).u32(i.minimum).u32(i.preferred).u32(i.maximum).done();
    case 'unknown': checkUint(i.type, 16, 'information type'); return new Writer(2 + i.data.length).u16(i.type).bytes(i.data).done();
  }
}

/** Builds the reply to `option` carrying payload `p`. */
export function encodeReplyPayload(option: number, p: ReplyPayload): OptionReply {
  switch (p.kind) {
    case 'ack': return { option, type: REP.ACK, data: Buffer.alloc(0) };
    case 'error':
      if (!(p.type & REP_ERR_BIT)) throw dfError('DF_ERR_BAD_REQUEST', `nbd: reply type ${p.type} is not an error`, { field: 'reply type' });
      return { option, type: p.type, data: strBytes(p.message, 'error message') };
    case 'server': {
      const name = strBytes(p.name, 'export name');
      const desc = strBytes(p.description, 'description');
      return { option, type: REP.SERVER, data: new Writer(4 + name.length + desc.length).u32(name.length).bytes(name).bytes(desc).done() };
    }
    case 'info': { const { kind: _k, ...info } = p; return { option, type: REP.INFO, data: encodeInfo(info) }; }
    case 'meta-context': {
      checkUint(p.id, 32, 'context id');
      const name = strBytes(p.name, 'context name');
      return { option, type: REP.META_CONTEXT, data: new Writer(4 + name.length).u32(p.id).bytes(name).done() };
    }
    case 'unknown': return { option, type: p.type, data: p.data };
  }
}

// ——— reply to NBD_OPT_EXPORT_NAME (no option-reply framing) ———

export interface ExportInfo {
  size: number;
  flags: number;
}

export const exportNameReplySize = (noZeroes: boolean): number => 10 + (noZeroes ? 0 : EXPORT_ZEROES);

export function encodeExportNameReply(e: ExportInfo, noZeroes: boolean): Buffer {
  checkUint(e.size, 64, 'export size');
  checkUint(e.flags, 16, 'transmission flags');
  const w = new Writer(exportNameReplySize(noZeroes)).u64(e.size).u16(e.flags);
  w.offset = w.buf.length; // the zeroes are already there
  return w.done();
}

export function decodeExportNameReply(buf: Buffer, noZeroes: boolean): ExportInfo {
  const r = new Reader(buf, 'nbd export name reply');
  const e = { size: r.u64('export size'), flags: r.u16('transmission flags') };
  if (!noZeroes) {
    const at = r.offset;
    if (r.bytes(EXPORT_ZEROES, 'reserved zeroes').some((b) => b !== 0)) r.fail('reserved zeroes', 'not all zero', at);
  }
  r.end();
  return e;
}
