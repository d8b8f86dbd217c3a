import { readFileSync } from 'node:fs';
import fs from 'node:fs';
import type { Logger } from '../log.js';
import { loadNative } from '../native/addon.js';
import { decodeNd, encodeRouterAdvert, ND_ROUTER_SOLICIT } from './packet.js';

/**
 * "No IPv6 router here" on the boot LAN: Router Advertisements with router lifetime 0, no prefix,
 * M = O = 0 (RFC 4861 §4.2, §6.2). iPXE's IPv6 autoconfiguration then finishes at once instead of
 * soliciting for ~14 s on every boot (pxe-e2e-findings §7.2, §11). Solicitations (§6.2.6) are
 * answered at once to all-nodes; unsolicited RAs go out every `intervalSeconds` (§6.2.4).
 * Answers are at least 1 s apart (one multicast RA serves every soliciting client).
 */
export interface RaOptions {
  interface: string;
  log: Logger;
  intervalSeconds?: number;
}

export interface RaResponder {
  close(): Promise<void>;
}

const ALL_NODES = 'ff02::1';

function macOf(ifname: string): Buffer | undefined {
  try {
    const hex = readFileSync(`/sys/class/net/${ifname}/address`, 'utf8').trim().replaceAll(':', '');
    return hex.length === 12 ? Buffer.from(hex, 'hex') : undefined;
  } catch {
    return undefined;
  }
}

export async function startRa(opts: RaOptions): Promise<RaResponder> {
  const log = opts.log.child({ svc: 'ra', iface: opts.interface });
  const native = loadNative();
  const ifindex = native.ifIndex(opts.interface);
  const fd = native.icmp6Socket(opts.interface);
  const mac = macOf(opts.interface);
  const ra = encodeRouterAdvert({ curHopLimit: 0, managed: false, other: false, routerLifetime: 0, reachableTime: 0, retransTimer: 0, ...(mac ? { sourceLinkAddr: mac } : {}) });
  let closed = false;
  let last = 0;
  let deferred: NodeJS.Timeout | undefined;

  const advertise = (why: string): void => {
    if (closed || deferred) return;
    const wait = last + 1000 - Date.now();
    if (wait > 0) {
      // Too soon after the previous RA: send one when the second is up, not never.
      deferred = setTimeout(() => {
        deferred = undefined;
        advertise(why);
      }, wait);
      return;
    }
    last = Date.now();
    try {
      native.icmp6Send(fd, ifindex, ALL_NODES, ra);
      log.debug({ why }, 'router advertisement sent');
    } catch (err) {
      // E.g. EADDRNOTAVAIL while the interface has no link-local address yet: the next tick retries.
      log.debug({ err, why }, 'router advertisement not sent');
    }
  };

  // The socket blocks with a 1 s receive timeout, so reads run in the thread pool and wake up
  // (EAGAIN) at least once a second to see whether we are closing.
  const buf = Buffer.alloc(1500);
  const reading = new Promise<void>((resolve) => {
    const next = (): void => {
      if (closed) return resolve();
      fs.read(fd, buf, 0, buf.length, null, (err, n) => {
        if (err) {
          if (err.code !== 'EAGAIN' && err.code !== 'EINTR') log.warn({ err }, 'icmpv6 read failed');
        } else {
          try {
            if (decodeNd(buf.subarray(0, n)).type === ND_ROUTER_SOLICIT) advertise('solicited');
          } catch (e) {
            log.debug({ err: e }, 'malformed icmpv6 message dropped');
          }
        }
        next();
      });
    };
    next();
  });
  const timer = setInterval(() => advertise('periodic'), (opts.intervalSeconds ?? 10) * 1000);
  timer.unref();
  advertise('start');
  log.info({}, 'router advertisements (lifetime 0) on');

  return {
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      clearTimeout(deferred);
      await reading;
      native.close(fd);
    },
  };
}
