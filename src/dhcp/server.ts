import dgram from 'node:dgram';
import type { Logger } from '../log.js';
import { loadNative } from '../native/addon.js';
import { LeasePool, ipToInt } from './leases.js';
import type { DhcpLeaseRepo } from './model.js';
import {
  BOOTREPLY, BOOTREQUEST, decodeDhcp, enc, encodeDhcp, FLAG_BROADCAST, IPXE_NO_PXEDHCP, MSG, MSG_NAME, OPT, PXE_DISCOVERY_CONTROL,
  type DecodedDhcp,
} from './packet.js';
import { classify, type BootSpec, type Booter, type Client } from './policy.js';

/**
 * The DHCP service: the socket adapter around the pure codec (packet.ts), policy (policy.ts) and
 * pool (leases.ts: its bindings live in the metadata database, shared by every server). Sockets
 * come from the native addon, bound to the boot interface (SO_BINDTODEVICE), so on a multi-NIC server only the boot LAN is heard and answered.
 *
 *   proxy: a proxyDHCP (PXE spec 2.1 §2.2): answers PXE clients only, never hands out addresses.
 *   full:  a DHCP server with a pool (RFC 2131 §4.3), plus the same boot options for PXE/iPXE.
 *          Several servers may answer one LAN over one database: each pool decision is one
 *          transaction there, so they never hand out one address twice.
 * Both answer PXE boot-server requests on UDP 4011 (PXE spec §2.2.5) unicast to the sender.
 */
export interface DhcpEvent {
  phase: 'dhcp';
  mac: string;
  ip?: string;
  kind: 'offer' | 'ack' | 'nak' | 'proxy-offer' | 'proxy-ack' | 'pxe-ack';
  file?: string;
  arch?: number;
  isIpxe: boolean;
}

export interface DhcpOptions {
  mode: 'proxy' | 'full';
  interface: string;
  /** Our IPv4 address on that interface. */
  serverIp: string;
  booter: Booter;
  log: Logger;
  pool?: { first: string; last: string; netmask: string; router?: string; dns?: string[]; leaseSeconds: number; leases: DhcpLeaseRepo };
  onEvent?: (e: DhcpEvent) => void;
  /** A client's address as seen in its REQUEST, answered or not (proxy mode: the site's server gave it). */
  onAddress?: (mac: string, ip: string) => void;
  ports?: { server: number; client: number; pxe: number };
}

export interface DhcpServer {
  close(): Promise<void>;
}

const ZERO = '0.0.0.0';
/**
 * Receive buffer of each DHCP socket. The default (208 KiB: ~150 queued messages) overflows when a
 * few hundred machines power on at once, and a lost DISCOVER costs its client a 4 s retransmission
 * (PXE ROMs: 4, 8, 16, 32 s). 4 MiB queues thousands; set with SO_RCVBUFFORCE (a DHCP server runs
 * privileged), else the kernel caps it at net.core.rmem_max.
 */
const RCVBUF = 4 << 20;

export async function startDhcp(opts: DhcpOptions): Promise<DhcpServer> {
  const ports = opts.ports ?? { server: 67, client: 68, pxe: 4011 };
  const log = opts.log.child({ svc: 'dhcp', mode: opts.mode, iface: opts.interface });
  const p = opts.pool;
  if (opts.mode === 'full' && !p) throw new Error('startDhcp: full mode needs a pool');
  const pool = opts.mode === 'full' && p
    ? new LeasePool(p.leases, { first: p.first, last: p.last, leaseSeconds: p.leaseSeconds, exclude: [opts.serverIp, ...(p.router ? [p.router] : [])] })
    : undefined;
  const native = loadNative();
  const open = async (port: number): Promise<dgram.Socket> => {
    const fd = native.udpSocket(opts.interface, port, { broadcast: true, reuseAddr: true, rcvbuf: RCVBUF });
    const s = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind({ fd }, () => {
        s.off('error', reject);
        resolve();
      });
    });
    s.on('error', (err) => log.warn({ err, port }, 'dhcp socket error'));
    // Linux reports twice what it granted (the doubling covers its own bookkeeping, socket(7)).
    const got = s.getRecvBufferSize() / 2;
    if (got < RCVBUF) log.warn({ port, bytes: got, wanted: RCVBUF }, `dhcp receive buffer capped by the kernel: a burst of requests may be dropped (sysctl -w net.core.rmem_max=${RCVBUF})`);
    return s;
  };
  const main = await open(ports.server);
  const pxe = await open(ports.pxe).catch((err: unknown) => {
    main.close();
    throw err;
  });

  const send = (s: dgram.Socket, buf: Buffer, port: number, address: string): Promise<void> =>
    new Promise((resolve) => s.send(buf, port, address, (err) => {
      if (err) log.warn({ err, address, port }, 'dhcp send failed');
      resolve();
    }));

  /** RFC 2131 §4.1: to the relay; else unicast to a configured client; else broadcast (we cannot unicast to a client without an address: no ARP injection). */
  const destination = (req: DecodedDhcp, kind: number): [string, number] => {
    if (req.giaddr !== ZERO) return [req.giaddr, ports.server];
    if (kind === MSG.NAK) return ['255.255.255.255', ports.client];
    if (req.ciaddr !== ZERO) return [req.ciaddr, ports.client];
    return ['255.255.255.255', ports.client];
  };

  /** PXE/iPXE boot options (PXE spec §2.4, RFC 4578 §2.3, iPXE's 175), common to every mode. */
  const bootOptions = (req: DecodedDhcp, c: Client, spec: BootSpec, o: Map<number, Buffer>): void => {
    o.set(OPT.VENDOR_CLASS, enc.str(c.isHttpBoot ? 'HTTPClient' : 'PXEClient'));
    if (!spec.file.includes('://')) o.set(OPT.TFTP_SERVER, enc.str(spec.tftpServer ?? opts.serverIp));
    o.set(OPT.BOOTFILE, enc.str(spec.file));
    // Discovery control bit 3: boot the file named in this offer, no menu or boot-server discovery.
    if (c.isPxe) o.set(OPT.VENDOR, enc.sub(new Map([[PXE_DISCOVERY_CONTROL, enc.u8(8)]])));
    const uuid = req.options.get(OPT.UUID);
    if (uuid) o.set(OPT.UUID, uuid);
    if (spec.ipxeNoPxeDhcp) o.set(OPT.IPXE, enc.sub(new Map([[IPXE_NO_PXEDHCP, enc.u8(1)]])));
  };

  const reply = (req: DecodedDhcp, kind: number, yiaddr: string, spec: BootSpec | null, c: Client, extra: Map<number, Buffer>): Buffer => {
    const o = new Map<number, Buffer>([[OPT.MESSAGE_TYPE, enc.u8(kind)], [OPT.SERVER_ID, enc.ip(opts.serverIp)]]);
    for (const [k, v] of extra) o.set(k, v);
    if (spec && kind !== MSG.NAK) bootOptions(req, c, spec, o);
    const file = spec && kind !== MSG.NAK && Buffer.byteLength(spec.file) <= 127 ? spec.file : '';
    return encodeDhcp({
      op: BOOTREPLY, htype: req.htype, hlen: req.hlen, hops: 0, xid: req.xid, secs: 0, flags: req.flags,
      ciaddr: kind === MSG.NAK ? ZERO : req.ciaddr, yiaddr, siaddr: spec && kind !== MSG.NAK ? spec.tftpServer ?? opts.serverIp : ZERO,
      giaddr: req.giaddr, chaddr: req.chaddr, sname: '', file, options: o,
    });
  };

  const event = (c: Client, kind: DhcpEvent['kind'], ip: string | undefined, spec: BootSpec | null): void => {
    const e: DhcpEvent = { phase: 'dhcp', mac: c.mac, kind, isIpxe: c.isIpxe };
    if (ip && ip !== ZERO) e.ip = ip;
    if (spec) e.file = spec.file;
    if (c.arch !== undefined) e.arch = c.arch;
    log.debug({ ...e, dhcp: { vendorClass: c.vendorClass, userClass: c.userClass } }, `dhcp ${kind}`);
    try {
      opts.onEvent?.(e);
    } catch (err) {
      log.warn({ err }, 'dhcp onEvent threw');
    }
  };

  const bootFor = (c: Client): BootSpec | null => (c.isPxe || c.isHttpBoot ? opts.booter.bootSpec(c) : null);

  const leaseOptions = (): Map<number, Buffer> => {
    const o = new Map<number, Buffer>();
    if (!p) return o;
    o.set(OPT.LEASE_TIME, enc.u32(p.leaseSeconds));
    o.set(OPT.RENEWAL_T1, enc.u32(Math.floor(p.leaseSeconds / 2))); // RFC 2131 §4.4.5 defaults
    o.set(OPT.REBINDING_T2, enc.u32(Math.floor(p.leaseSeconds * 0.875)));
    return new Map([...o, ...configOptions()]);
  };
  const configOptions = (): Map<number, Buffer> => {
    const o = new Map<number, Buffer>();
    if (!p) return o;
    o.set(OPT.SUBNET_MASK, enc.ip(p.netmask));
    if (p.router) o.set(OPT.ROUTER, enc.ip(p.router));
    if (p.dns?.length) o.set(OPT.DNS, enc.ips(p.dns));
    return o;
  };
  const onOurNet = (ip: string): boolean => {
    if (!p) return false;
    const m = ipToInt(p.netmask);
    return ((ipToInt(ip) & m) >>> 0) === ((ipToInt(opts.serverIp) & m) >>> 0);
  };

  /** proxyDHCP on 67 (PXE spec §2.2.1): PXE clients only, yiaddr 0, broadcast (or to the relay). */
  const proxy67 = async (req: DecodedDhcp, c: Client): Promise<void> => {
    const t = req.opts.messageType;
    if (!c.isPxe || (t !== MSG.DISCOVER && t !== MSG.REQUEST)) return;
    const named = req.opts.requestedIp ?? (req.ciaddr !== ZERO ? req.ciaddr : undefined);
    if (t === MSG.REQUEST && named) opts.onAddress?.(c.mac, named);
    // A REQUEST naming another server is that server's business (RFC 2131 §4.3.2).
    if (t === MSG.REQUEST && req.opts.serverId && req.opts.serverId !== opts.serverIp) return;
    const spec = opts.booter.bootSpec(c);
    if (!spec) return;
    const kind = t === MSG.DISCOVER ? MSG.OFFER : MSG.ACK;
    // To the relay, else broadcast: the client may not have (or accept unicast to) an address yet.
    const [addr, port] = req.giaddr !== ZERO ? [req.giaddr, ports.server] : ['255.255.255.255', ports.client];
    await send(main, reply(req, kind, ZERO, spec, c, new Map()), port, addr);
    // The site's server gave the address; the client names it in its REQUEST (option 50 or ciaddr),
    // which lets TFTP transfers from that address be told apart by MAC.
    event(c, kind === MSG.OFFER ? 'proxy-offer' : 'proxy-ack', kind === MSG.ACK ? req.opts.requestedIp ?? req.ciaddr : undefined, spec);
  };

  /** Full DHCP on 67 (RFC 2131 §4.3). */
  const full67 = async (req: DecodedDhcp, c: Client, pl: LeasePool): Promise<void> => {
    const t = req.opts.messageType;
    const ours = req.opts.serverId === undefined || req.opts.serverId === opts.serverIp;
    const nak = async (why: string): Promise<void> => {
      const [addr, port] = destination(req, MSG.NAK);
      await send(main, reply(req, MSG.NAK, ZERO, null, c, new Map([[OPT.MESSAGE, enc.str(why)]])), port, addr);
      log.info({ mac: c.mac, requested: req.opts.requestedIp ?? req.ciaddr, why }, 'dhcp nak');
      event(c, 'nak', undefined, null);
    };
    const ack = async (ip: string): Promise<void> => {
      const spec = bootFor(c);
      const [addr, port] = destination(req, MSG.ACK);
      await send(main, reply(req, MSG.ACK, ip, spec, c, leaseOptions()), port, addr);
      log.info({ mac: c.mac, ip, file: spec?.file }, 'dhcp lease bound');
      event(c, 'ack', ip, spec);
    };
    switch (t) {
      case MSG.DISCOVER: {
        const ip = await pl.offer(c.mac, req.opts.requestedIp);
        if (!ip) {
          log.warn({ mac: c.mac }, 'dhcp pool exhausted');
          return;
        }
        const spec = bootFor(c);
        const [addr, port] = destination(req, MSG.OFFER);
        await send(main, reply(req, MSG.OFFER, ip, spec, c, leaseOptions()), port, addr);
        event(c, 'offer', ip, spec);
        return;
      }
      case MSG.REQUEST: {
        const requested = req.opts.requestedIp;
        if (req.opts.serverId !== undefined) {
          // SELECTING (§4.3.2): another server's id means the client chose that server's offer.
          if (!ours) return pl.dropOffer(c.mac, requested);
          if (!requested) return;
          return (await pl.bind(c.mac, requested)) ? ack(requested) : nak('address not available');
        }
        if (requested && req.ciaddr === ZERO) {
          // INIT-REBOOT: NAK a wrong network or another binding; no record at all → silence.
          if (!onOurNet(requested)) return nak('wrong network');
          const own = await pl.byMac(c.mac);
          if (!own) return;
          if (own.ip !== requested) return nak('not your address');
          return (await pl.bind(c.mac, requested)) ? ack(requested) : nak('address not available');
        }
        if (req.ciaddr !== ZERO) {
          // RENEWING (unicast) / REBINDING (broadcast): extend if the address is still the client's.
          if (!pl.inRange(req.ciaddr)) return;
          return (await pl.bind(c.mac, req.ciaddr)) ? ack(req.ciaddr) : nak('address not available');
        }
        return;
      }
      case MSG.DECLINE:
        if (ours && req.opts.requestedIp && (await pl.decline(c.mac, req.opts.requestedIp))) {
          log.warn({ mac: c.mac, ip: req.opts.requestedIp }, 'dhcp address declined: someone else uses it');
        }
        return;
      case MSG.RELEASE:
        if (ours && (await pl.release(c.mac, req.ciaddr))) log.info({ mac: c.mac, ip: req.ciaddr }, 'dhcp lease released');
        return;
      case MSG.INFORM: {
        // §4.3.5: configuration only, no lease, no yiaddr; unicast to ciaddr.
        if (req.ciaddr === ZERO) return;
        const spec = bootFor(c);
        await send(main, reply(req, MSG.ACK, ZERO, spec, c, configOptions()), ports.client, req.giaddr !== ZERO ? req.giaddr : req.ciaddr);
        event(c, 'ack', undefined, spec);
        return;
      }
      default:
        return;
    }
  };

  /** PXE boot-server request on 4011 (PXE spec §2.2.5): an ACK with the boot file, unicast back. */
  const pxe4011 = async (req: DecodedDhcp, c: Client, rinfo: dgram.RemoteInfo): Promise<void> => {
    const t = req.opts.messageType;
    if (!c.isPxe || (t !== MSG.REQUEST && t !== MSG.INFORM)) return;
    const spec = opts.booter.bootSpec(c);
    if (!spec) return;
    await send(pxe, reply(req, MSG.ACK, ZERO, spec, c, new Map()), rinfo.port, rinfo.address);
    event(c, 'pxe-ack', req.ciaddr, spec);
  };

  // Messages of one MAC are answered one at a time, in arrival order; different MACs concurrently,
  // so the pool batches their decisions into one transaction (LeasePool.decide).
  const inFlight = new Map<string, Promise<void>>();
  const handle = (port: number) => (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    let req: DecodedDhcp;
    try {
      req = decodeDhcp(msg);
    } catch (err) {
      log.debug({ err, from: rinfo.address, port, bytes: msg.length }, 'dhcp: malformed message dropped');
      return;
    }
    if (req.op !== BOOTREQUEST || req.opts.messageType === undefined) return;
    const c = classify(req);
    log.debug({ mac: c.mac, type: MSG_NAME[req.opts.messageType] ?? req.opts.messageType, port, from: rinfo.address, flags: req.flags & FLAG_BROADCAST ? 'broadcast' : '' }, 'dhcp request');
    const work = async (): Promise<void> => {
      if (port === ports.pxe) return pxe4011(req, c, rinfo);
      if (pool) return full67(req, c, pool);
      return proxy67(req, c);
    };
    // A failed one (the database unreachable) drops the message: the client retransmits (RFC 2131 §4.1).
    const next = (inFlight.get(c.mac) ?? Promise.resolve()).then(work).catch((err: unknown) => log.warn({ err, mac: c.mac }, 'dhcp: answering failed, message dropped'));
    inFlight.set(c.mac, next);
    void next.then(() => {
      if (inFlight.get(c.mac) === next) inFlight.delete(c.mac);
    });
  };
  main.on('message', handle(ports.server));
  pxe.on('message', handle(ports.pxe));
  log.info({ serverIp: opts.serverIp, ports }, 'dhcp listening');

  return {
    async close() {
      await Promise.all([main, pxe].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      await Promise.all(inFlight.values());
    },
  };
}
