import { Reader } from '../wire/bytes.js';

/**
 * ICMPv6 Router Solicitation / Advertisement (RFC 4861 §4.1, §4.2), pure. The kernel fills in the
 * checksum on raw ICMPv6 sockets (RFC 3542 §3.1), so it is written as 0 and not checked here.
 *
 *   RS: type 133, code 0, checksum(2), reserved(4), options…
 *   RA: type 134, code 0, checksum(2), cur hop limit(1), M|O|reserved(1), router lifetime(2, s),
 *       reachable time(4, ms), retrans timer(4, ms), options…
 *   option: type(1), length(1, in units of 8 bytes, 0 is invalid), data
 */
export const ND_ROUTER_SOLICIT = 133;
export const ND_ROUTER_ADVERT = 134;
export const OPT_SOURCE_LLADDR = 1;

export interface RouterAdvert {
  curHopLimit: number;
  managed: boolean;
  other: boolean;
  /** Seconds; 0 = "not a default router" (§4.2). */
  routerLifetime: number;
  reachableTime: number;
  retransTimer: number;
  /** Source link-layer address option, e.g. the MAC as 6 bytes. */
  sourceLinkAddr?: Buffer;
}

export interface IcmpMessage {
  type: number;
  code: number;
  options: { type: number; data: Buffer }[];
}

function readOptions(r: Reader): { type: number; data: Buffer }[] {
  const out: { type: number; data: Buffer }[] = [];
  while (r.remaining > 0) {
    const at = r.offset;
    const type = r.u8('option type');
    const len = r.u8(`option ${type} length`);
    if (len === 0) r.fail(`option ${type} length`, 'is 0 (RFC 4861 §4.6: invalid)', at + 1);
    out.push({ type, data: Buffer.from(r.bytes(len * 8 - 2, `option ${type}`)) });
  }
  return out;
}

/** Decode an RS or RA (the ICMPv6 message without its IPv6 header). */
export function decodeNd(buf: Buffer): IcmpMessage & { advert?: RouterAdvert } {
  const r = new Reader(buf, 'icmpv6');
  const type = r.u8('type');
  const code = r.u8('code');
  r.u16('checksum');
  if (code !== 0) r.fail('code', `${code}, expected 0`, 1);
  if (type === ND_ROUTER_SOLICIT) {
    r.u32('reserved');
    return { type, code, options: readOptions(r) };
  }
  if (type !== ND_ROUTER_ADVERT) r.fail('type', `${type} is neither a router solicitation nor an advertisement`, 0);
  const curHopLimit = r.u8('cur hop limit');
  const flags = r.u8('flags');
  const routerLifetime = r.u16('router lifetime');
  const reachableTime = r.u32('reachable time');
  const retransTimer = r.u32('retrans timer');
  const options = readOptions(r);
  const ll = options.find((o) => o.type === OPT_SOURCE_LLADDR);
  const advert: RouterAdvert = { curHopLimit, managed: (flags & 0x80) !== 0, other: (flags & 0x40) !== 0, routerLifetime, reachableTime, retransTimer };
  if (ll) advert.sourceLinkAddr = ll.data;
  return { type, code, options, advert };
}

export function encodeRouterAdvert(a: RouterAdvert): Buffer {
  const head = Buffer.alloc(16);
  head[0] = ND_ROUTER_ADVERT;
  head[4] = a.curHopLimit;
  head[5] = (a.managed ? 0x80 : 0) | (a.other ? 0x40 : 0);
  head.writeUInt16BE(a.routerLifetime, 6);
  head.writeUInt32BE(a.reachableTime, 8);
  head.writeUInt32BE(a.retransTimer, 12);
  if (!a.sourceLinkAddr) return head;
  // Pad the option to a multiple of 8 bytes (§4.6).
  const len = Math.ceil((a.sourceLinkAddr.length + 2) / 8);
  const opt = Buffer.alloc(len * 8);
  opt[0] = OPT_SOURCE_LLADDR;
  opt[1] = len;
  a.sourceLinkAddr.copy(opt, 2);
  return Buffer.concat([head, opt]);
}

export function encodeRouterSolicit(): Buffer {
  const b = Buffer.alloc(8);
  b[0] = ND_ROUTER_SOLICIT;
  return b;
}
