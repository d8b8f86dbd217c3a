import { dfError } from '../errors.js';
import { Reader } from '../wire/bytes.js';

/**
 * BOOTP/DHCP message codec (RFC 2131 §2, RFC 951), pure.
 *
 *   0      op(1) htype(1) hlen(1) hops(1)
 *   4      xid(4)
 *   8      secs(2) flags(2)                 flags bit 15 = BROADCAST (RFC 2131 §2, figure 2)
 *   12     ciaddr(4) yiaddr(4) siaddr(4) giaddr(4)
 *   28     chaddr(16)                       the first hlen bytes are the hardware address
 *   44     sname(64)  108 file(128)         NUL-terminated strings, or more options (overload)
 *   236    magic cookie 63 82 53 63         (RFC 2131 §3, RFC 2132 §2)
 *   240    options: code(1) len(1) data …   0 = pad, 255 = end (RFC 2132 §2)
 *
 * Options are kept as a Map code → bytes. A code that appears several times is one option whose
 * data is the concatenation, in the order options → file → sname (RFC 3396 §5-6); option 52
 * (overload, RFC 2132 §9.3) is honoured on decode and removed from the map; encode never overloads
 * and splits data longer than 255 bytes into consecutive instances (RFC 3396 §7).
 * `decodeDhcp` also checks and decodes the options deskfuse reads (`opts`), so a bad length is a
 * DF_ERR_DECODE naming the option and its offset.
 */

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const MAGIC_COOKIE = 0x63825363;
export const FLAG_BROADCAST = 0x8000;
const HEADER = 236;
/** RFC 1542 §3.3 / RFC 951: BOOTP messages are at least 300 bytes; some PXE ROMs drop shorter ones. */
const MIN_MESSAGE = 300;

/** DHCP message types, option 53 (RFC 2132 §9.6). */
export const MSG = { DISCOVER: 1, OFFER: 2, REQUEST: 3, DECLINE: 4, ACK: 5, NAK: 6, RELEASE: 7, INFORM: 8 } as const;
export const MSG_NAME: Record<number, string> = Object.fromEntries(Object.entries(MSG).map(([k, v]) => [v, k.toLowerCase()]));

/** Option codes deskfuse reads or writes. */
export const OPT = {
  PAD: 0, SUBNET_MASK: 1, ROUTER: 3, DNS: 6, HOSTNAME: 12, VENDOR: 43, REQUESTED_IP: 50, LEASE_TIME: 51,
  OVERLOAD: 52, MESSAGE_TYPE: 53, SERVER_ID: 54, PARAM_LIST: 55, MESSAGE: 56, MAX_SIZE: 57, RENEWAL_T1: 58, REBINDING_T2: 59,
  VENDOR_CLASS: 60, CLIENT_ID: 61, TFTP_SERVER: 66, BOOTFILE: 67, USER_CLASS: 77, CLIENT_ARCH: 93, CLIENT_NDI: 94,
  UUID: 97, IPXE: 175, END: 255,
} as const;

/** PXE vendor options inside option 43 (PXE spec 2.1 §2.4.1); iPXE's inside option 175. */
export const PXE_DISCOVERY_CONTROL = 6;
export const IPXE_NO_PXEDHCP = 176;

export interface DhcpMessage {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** The hardware address: the first hlen bytes of the 16-byte field. */
  chaddr: Buffer;
  sname: string;
  file: string;
  options: Map<number, Buffer>;
}

/** The options deskfuse uses, decoded and length-checked. */
export interface DhcpOpts {
  messageType?: number;
  serverId?: string;
  requestedIp?: string;
  leaseTime?: number;
  subnetMask?: string;
  routers?: string[];
  dns?: string[];
  hostname?: string;
  paramList?: number[];
  maxMessageSize?: number;
  vendorClass?: string;
  clientId?: Buffer;
  tftpServer?: string;
  bootfile?: string;
  /** Option 77: RFC 3004 instances, or iPXE's plain string as one entry. */
  userClass?: string[];
  /** Option 93 (RFC 4578 §2.1): one or more architecture types. */
  clientArch?: number[];
  /** Option 94 (RFC 4578 §2.2). */
  clientNdi?: { type: number; major: number; minor: number };
  /**
   * Option 97 (RFC 4578 §2.3): type 0 + 16-byte GUID. PXE sends it in SMBIOS order (the first three
   * fields little-endian); shown here as the canonical UUID, as dmidecode and QEMU's -uuid print it.
   */
  uuid?: string;
  /** Option 43 sub-options when option 60 is PXEClient (PXE spec §2.4). */
  pxe?: Map<number, Buffer>;
  /** Option 175 sub-options (iPXE). */
  ipxe?: Map<number, Buffer>;
}

export interface DecodedDhcp extends DhcpMessage {
  opts: DhcpOpts;
}

// ——— decode ———

function ip(b: Buffer, at = 0): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

function cstring(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('latin1');
}

/** Walk a TLV area: pad 0 skipped, end 255 stops (RFC 2132 §2-3). Repeated codes concatenate (RFC 3396). */
function walkOptions(r: Reader, end: number, out: Map<number, Buffer>, offsets: Map<number, number>): void {
  while (r.offset < end) {
    const at = r.offset;
    const code = r.u8('option code');
    if (code === OPT.PAD) continue;
    if (code === OPT.END) return;
    if (r.offset >= end) r.fail(`option ${code} length`, 'missing', at);
    const len = r.u8(`option ${code} length`);
    if (r.offset + len > end) r.fail(`option ${code}`, `length ${len} runs past the end of its area (${end - r.offset} bytes left)`, at);
    const data = r.bytes(len, `option ${code}`);
    const prev = out.get(code);
    out.set(code, prev ? Buffer.concat([prev, data]) : Buffer.from(data));
    if (!offsets.has(code)) offsets.set(code, at);
  }
}

/** A reader over the whole message starting at an absolute offset (the overloaded sname/file fields). */
function readerAt(buf: Buffer, offset: number): Reader {
  const r = new Reader(buf, 'dhcp');
  r.offset = offset;
  return r;
}

export function decodeDhcp(buf: Buffer): DecodedDhcp {
  const r = new Reader(buf, 'dhcp');
  if (buf.length < HEADER) r.fail('header', `message is ${buf.length} bytes, a BOOTP header needs ${HEADER}`, 0);
  const op = r.u8('op');
  if (op !== BOOTREQUEST && op !== BOOTREPLY) r.fail('op', `${op} is neither BOOTREQUEST nor BOOTREPLY`, 0);
  const htype = r.u8('htype');
  const hlen = r.u8('hlen');
  if (hlen > 16) r.fail('hlen', `${hlen} exceeds the 16-byte chaddr field`, 2);
  const hops = r.u8('hops');
  const xid = r.u32('xid');
  const secs = r.u16('secs');
  const flags = r.u16('flags');
  const ciaddr = ip(r.bytes(4, 'ciaddr'));
  const yiaddr = ip(r.bytes(4, 'yiaddr'));
  const siaddr = ip(r.bytes(4, 'siaddr'));
  const giaddr = ip(r.bytes(4, 'giaddr'));
  const chaddr = Buffer.from(r.bytes(16, 'chaddr').subarray(0, hlen));
  const snameRaw = r.bytes(64, 'sname');
  const fileRaw = r.bytes(128, 'file');
  const options = new Map<number, Buffer>();
  const offsets = new Map<number, number>();
  let sname = cstring(snameRaw);
  let file = cstring(fileRaw);
  // Plain BOOTP (no cookie) has a free-form vendor area: no options.
  if (buf.length >= HEADER + 4 && buf.readUInt32BE(HEADER) === MAGIC_COOKIE) {
    r.u32('magic cookie');
    walkOptions(r, buf.length, options, offsets);
    const overload = options.get(OPT.OVERLOAD);
    if (overload) {
      if (overload.length !== 1 || overload[0]! < 1 || overload[0]! > 3) {
        r.fail('option 52', `overload value ${overload.toString('hex')} is not 1, 2 or 3`, offsets.get(OPT.OVERLOAD));
      }
      options.delete(OPT.OVERLOAD);
      // RFC 3396 §6: options, then file, then sname.
      if (overload[0]! & 1) {
        walkOptions(readerAt(buf, 108), 108 + 128, options, offsets);
        file = '';
      }
      if (overload[0]! & 2) {
        walkOptions(readerAt(buf, 44), 44 + 64, options, offsets);
        sname = '';
      }
    }
  }
  const msg: DhcpMessage = { op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file, options };
  return { ...msg, opts: decodeOpts(options, offsets) };
}

/** Length rules for the options deskfuse reads: [min, max, multiple-of]. */
const LENGTHS: Record<number, [number, number, number]> = {
  [OPT.MESSAGE_TYPE]: [1, 1, 1], [OPT.SERVER_ID]: [4, 4, 4], [OPT.REQUESTED_IP]: [4, 4, 4], [OPT.LEASE_TIME]: [4, 4, 4],
  [OPT.SUBNET_MASK]: [4, 4, 4], [OPT.ROUTER]: [4, 1020, 4], [OPT.DNS]: [4, 1020, 4], [OPT.MAX_SIZE]: [2, 2, 2],
  [OPT.CLIENT_ARCH]: [2, 1020, 2], [OPT.CLIENT_NDI]: [3, 3, 3], [OPT.UUID]: [17, 17, 17], [OPT.CLIENT_ID]: [1, 1020, 1],
  [OPT.HOSTNAME]: [1, 1020, 1], [OPT.VENDOR_CLASS]: [1, 1020, 1], [OPT.USER_CLASS]: [1, 1020, 1],
};

function decodeOpts(o: Map<number, Buffer>, offsets: Map<number, number>): DhcpOpts {
  for (const [code, [min, max, mult]] of Object.entries(LENGTHS)) {
    const v = o.get(Number(code));
    if (v && (v.length < min || v.length > max || v.length % mult !== 0)) {
      const expected = min === max ? `${min}` : mult > 1 ? `a multiple of ${mult}, at least ${min}` : `at least ${min}`;
      const at = offsets.get(Number(code)) ?? 0;
      throw dfError('DF_ERR_DECODE', `dhcp: option ${code} length ${v.length} at offset ${at}, expected ${expected}`, { what: 'dhcp', field: `option ${code}`, offset: at });
    }
  }
  const out: DhcpOpts = {};
  const g = (c: number): Buffer | undefined => o.get(c);
  const ips = (b: Buffer): string[] => Array.from({ length: b.length / 4 }, (_, i) => ip(b, i * 4));
  const str = (b: Buffer): string => cstring(b);
  let v: Buffer | undefined;
  if ((v = g(OPT.MESSAGE_TYPE))) out.messageType = v[0]!;
  if ((v = g(OPT.SERVER_ID))) out.serverId = ip(v);
  if ((v = g(OPT.REQUESTED_IP))) out.requestedIp = ip(v);
  if ((v = g(OPT.LEASE_TIME))) out.leaseTime = v.readUInt32BE(0);
  if ((v = g(OPT.SUBNET_MASK))) out.subnetMask = ip(v);
  if ((v = g(OPT.ROUTER))) out.routers = ips(v);
  if ((v = g(OPT.DNS))) out.dns = ips(v);
  if ((v = g(OPT.HOSTNAME))) out.hostname = str(v);
  if ((v = g(OPT.PARAM_LIST))) out.paramList = [...v];
  if ((v = g(OPT.MAX_SIZE))) out.maxMessageSize = v.readUInt16BE(0);
  if ((v = g(OPT.VENDOR_CLASS))) out.vendorClass = str(v);
  if ((v = g(OPT.CLIENT_ID))) out.clientId = v;
  if ((v = g(OPT.TFTP_SERVER))) out.tftpServer = str(v);
  if ((v = g(OPT.BOOTFILE))) out.bootfile = str(v);
  if ((v = g(OPT.USER_CLASS))) out.userClass = userClass(v);
  if ((v = g(OPT.CLIENT_ARCH))) out.clientArch = Array.from({ length: v.length / 2 }, (_, i) => v!.readUInt16BE(i * 2));
  if ((v = g(OPT.CLIENT_NDI))) out.clientNdi = { type: v[0]!, major: v[1]!, minor: v[2]! };
  if ((v = g(OPT.UUID))) out.uuid = uuid(v, offsets.get(OPT.UUID) ?? 0);
  if ((v = g(OPT.VENDOR)) && out.vendorClass?.startsWith('PXEClient')) out.pxe = encapsulated(v, 43, offsets.get(OPT.VENDOR) ?? 0);
  if ((v = g(OPT.IPXE))) out.ipxe = encapsulated(v, 175, offsets.get(OPT.IPXE) ?? 0);
  return out;
}

/** RFC 3004 §4: len + data instances that exactly fill the option; otherwise iPXE's plain string. */
function userClass(b: Buffer): string[] {
  const parts: string[] = [];
  for (let i = 0; i < b.length; ) {
    const n = b[i]!;
    if (n === 0 || i + 1 + n > b.length) return [b.toString('latin1')];
    parts.push(b.toString('latin1', i + 1, i + 1 + n));
    i += 1 + n;
  }
  return parts;
}

function uuid(b: Buffer, at: number): string {
  if (b[0] !== 0) throw dfError('DF_ERR_DECODE', `dhcp: option 97 type ${b[0]} at offset ${at}, expected 0 (GUID)`, { what: 'dhcp', field: 'option 97', offset: at });
  const g = b.subarray(1);
  const h = Buffer.concat([Buffer.from(g.subarray(0, 4)).reverse(), Buffer.from(g.subarray(4, 6)).reverse(), Buffer.from(g.subarray(6, 8)).reverse(), g.subarray(8)]).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Sub-options of an encapsulated option (43, 175): the same TLV rules as the options field. */
function encapsulated(b: Buffer, code: number, at: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  try {
    walkOptions(new Reader(b, `option ${code}`), b.length, out, new Map());
  } catch (err) {
    const inner = (err as { fields?: { offset?: number } }).fields?.offset ?? 0;
    throw dfError('DF_ERR_DECODE', `dhcp: option ${code} sub-option at offset ${at + 2 + inner}: ${(err as Error).message}`, { what: 'dhcp', field: `option ${code}`, offset: at + 2 + inner }, err);
  }
  return out;
}

// ——— encode ———

function ipBytes(s: string, field: string): Buffer {
  const parts = s.split('.');
  const b = Buffer.alloc(4);
  if (parts.length !== 4) throw dfError('DF_ERR_BAD_REQUEST', `${field} '${s}' is not an IPv4 address`, { field });
  parts.forEach((p, i) => {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw dfError('DF_ERR_BAD_REQUEST', `${field} '${s}' is not an IPv4 address`, { field });
    b[i] = n;
  });
  return b;
}

/** Option value builders. */
export const enc = {
  u8: (n: number): Buffer => Buffer.from([n]),
  u16: (n: number): Buffer => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; },
  u32: (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; },
  ip: (s: string): Buffer => ipBytes(s, 'ip'),
  ips: (l: string[]): Buffer => Buffer.concat(l.map((s) => ipBytes(s, 'ip'))),
  str: (s: string): Buffer => Buffer.from(s, 'latin1'),
  /** Encapsulated sub-options (43, 175), ended with 255 as the PXE spec asks. */
  sub: (m: Map<number, Buffer>): Buffer => Buffer.concat([...[...m].map(([c, v]) => Buffer.concat([Buffer.from([c, v.length]), v])), Buffer.from([OPT.END])]),
};

export function encodeDhcp(m: DhcpMessage): Buffer {
  // Refuse what cannot be represented before writing anything.
  const bad = (field: string, why: string): never => { throw dfError('DF_ERR_BAD_REQUEST', `dhcp: ${field} ${why}`, { field }); };
  if (m.chaddr.length > 16) bad('chaddr', `is ${m.chaddr.length} bytes, at most 16`);
  if (m.hlen > 16) bad('hlen', `${m.hlen} exceeds 16`);
  const sname = Buffer.from(m.sname, 'latin1');
  const file = Buffer.from(m.file, 'latin1');
  if (sname.length > 63) bad('sname', `is ${sname.length} bytes, at most 63`);
  if (file.length > 127) bad('file', `is ${file.length} bytes, at most 127`);
  const addrs = (['ciaddr', 'yiaddr', 'siaddr', 'giaddr'] as const).map((f) => ipBytes(m[f], f));
  const opts: Buffer[] = [];
  for (const [code, data] of m.options) {
    if (!Number.isInteger(code) || code <= OPT.PAD || code >= OPT.END || code === OPT.OVERLOAD) bad(`option ${code}`, 'cannot be encoded as data');
    // RFC 3396 §7: split long data into consecutive instances of the same code.
    for (let i = 0; i === 0 || i < data.length; i += 255) {
      const part = data.subarray(i, i + 255);
      opts.push(Buffer.from([code, part.length]), part);
    }
  }
  opts.push(Buffer.from([OPT.END]));
  const body = Buffer.concat(opts);
  const out = Buffer.alloc(Math.max(MIN_MESSAGE, HEADER + 4 + body.length));
  out[0] = m.op;
  out[1] = m.htype;
  out[2] = m.hlen;
  out[3] = m.hops;
  out.writeUInt32BE(m.xid >>> 0, 4);
  out.writeUInt16BE(m.secs, 8);
  out.writeUInt16BE(m.flags, 10);
  addrs.forEach((a, i) => a.copy(out, 12 + i * 4));
  m.chaddr.copy(out, 28);
  sname.copy(out, 44);
  file.copy(out, 108);
  out.writeUInt32BE(MAGIC_COOKIE, HEADER);
  body.copy(out, HEADER + 4);
  return out;
}

/** The MAC as aa:bb:cc:dd:ee:ff (htype 1); other hardware types as plain hex. */
export function macOf(m: DhcpMessage): string {
  return [...m.chaddr].map((b) => b.toString(16).padStart(2, '0')).join(m.htype === 1 ? ':' : '');
}
