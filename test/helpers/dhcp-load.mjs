#!/usr/bin/env node
// A DHCP load client: N PXE clients (N MACs) in one process, run inside a client namespace:
//   ip netns exec NS node dhcp-load.mjs '<json config>'      (prints one JSON summary on stdout)
// One UDP socket on port 68 bound to `iface` (SO_BINDTODEVICE via the addon, as dhcp-probe.mjs):
// every client sets the BROADCAST flag, so every answer comes back to it; answers are told apart
// by xid and chaddr. Messages are encoded and decoded with the project's codec (dist/).
//
// Per MAC, at `count / durationMs` spread evenly: DISCOVER (options 60, 93, 94, 97 as PXE ROMs send;
// every `ipxeEvery`-th also option 77 "iPXE") →
//   full:  OFFER → REQUEST (SELECTING: server id + requested address, RFC 2131 §4.3.2) → ACK
//   proxy: OFFER (boot info only) → REQUEST unicast to the server's 4011 (PXE spec §2.2.5) → ACK
// A client that heard nothing retransmits after `retransmitMs`, doubling, `tries` times in all (PXE
// ROMs: 4, 8, 16, 32 s). Every `dupEvery`-th MAC sends its DISCOVER twice at once (a retransmission
// racing the answer): both must be answered with the same address.
// Prints a summary (counts, latency percentiles, `problems`), and with "perMac": true a row per MAC.
// Checks (→ `problems`): every MAC offered and acked; at most one answer per message sent; full: all
// offers of a MAC name one address, addresses distinct and in the pool, ACK = OFFER, lease time set;
// proxy: yiaddr 0; both: server id, next-server and boot file right for the arch (iPXE: script URL).
import dgram from 'node:dgram';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const ROOT = path.resolve(import.meta.dirname, '../..');
const { loadNative } = await import(path.join(ROOT, 'dist/src/native/addon.js'));
const { BOOTREPLY, BOOTREQUEST, decodeDhcp, enc, encodeDhcp, FLAG_BROADCAST, MSG, OPT } = await import(path.join(ROOT, 'dist/src/dhcp/packet.js'));

const cfg = {
  count: 500, durationMs: 10_000, retransmitMs: 4000, tries: 4, arches: [0, 7, 9], ipxeEvery: 5, dupEvery: 10,
  macBase: 0x02df_0000_0000, graceMs: 1000, ...JSON.parse(process.argv[2]),
};
const { iface, mode, server, pool, expect } = cfg; // expect: {files: {arch: file}, ipxe: url}
const ipInt = (s) => s.split('.').reduce((a, b) => a * 256 + Number(b), 0);

const sock = dgram.createSocket('udp4');
await new Promise((r) => sock.bind({ fd: loadNative().udpSocket(iface, 68, { broadcast: true, reuseAddr: true }) }, r));
sock.setRecvBufferSize(4 << 20); // 500 answers may arrive while we are busy sending

const clients = Array.from({ length: cfg.count }, (_, i) => {
  const mac = (cfg.macBase + i).toString(16).padStart(12, '0');
  const ipxe = cfg.ipxeEvery > 0 && i % cfg.ipxeEvery === cfg.ipxeEvery - 1;
  const uuid = Buffer.alloc(17);
  uuid.writeUInt32BE(i, 13);
  return {
    i, chaddr: Buffer.from(mac, 'hex'), mac: mac.match(/../g).join(':'), xid: (0x5a000000 + i) >>> 0,
    arch: cfg.arches[i % cfg.arches.length], ipxe, uuid, dup: cfg.dupEvery > 0 && i % cfg.dupEvery === 0,
    at: (i * cfg.durationMs) / cfg.count, sent: { discover: 0, request: 0 }, tries: 0, nextTry: Infinity,
    firstDiscover: undefined, firstRequest: undefined, offers: [], acks: [],
  };
});
const byXid = new Map(clients.map((c) => [c.xid, c]));

const message = (c, type, extra = []) => encodeDhcp({
  op: BOOTREQUEST, htype: 1, hlen: 6, hops: 0, xid: c.xid, secs: 0, flags: FLAG_BROADCAST,
  ciaddr: type === MSG.REQUEST && mode === 'proxy' ? cfg.ciaddr : '0.0.0.0', yiaddr: '0.0.0.0', siaddr: '0.0.0.0', giaddr: '0.0.0.0',
  chaddr: c.chaddr, sname: '', file: '', options: new Map([
    [OPT.MESSAGE_TYPE, enc.u8(type)],
    [OPT.VENDOR_CLASS, enc.str(`PXEClient:Arch:${String(c.arch).padStart(5, '0')}:UNDI:002001`)],
    [OPT.CLIENT_ARCH, enc.u16(c.arch)], [OPT.CLIENT_NDI, Buffer.from([1, 2, 1])], [OPT.UUID, c.uuid],
    [OPT.PARAM_LIST, Buffer.from([1, 3, 6, 43, 60, 66, 67, 97])],
    ...(c.ipxe ? [[OPT.USER_CLASS, enc.str('iPXE')]] : []),
    ...extra,
  ]),
});
const send = (buf, port, to) => new Promise((r) => sock.send(buf, port, to, r));

async function discover(c) {
  c.firstDiscover ??= performance.now();
  const buf = message(c, MSG.DISCOVER);
  for (let n = c.dup && c.sent.discover === 0 ? 2 : 1; n > 0; n--) {
    c.sent.discover++;
    await send(buf, 67, '255.255.255.255');
  }
}
async function request(c) {
  c.firstRequest ??= performance.now();
  c.sent.request++;
  if (mode === 'proxy') return send(message(c, MSG.REQUEST), 4011, server);
  const o = c.offers[0];
  return send(message(c, MSG.REQUEST, [[OPT.SERVER_ID, enc.ip(o.serverId)], [OPT.REQUESTED_IP, enc.ip(o.yiaddr)]]), 67, '255.255.255.255');
}
const backoff = (c) => performance.now() + cfg.retransmitMs * 2 ** (c.tries - 1);

const unexpected = [];
sock.on('message', (buf, rinfo) => {
  const t = performance.now();
  let m;
  try {
    m = decodeDhcp(buf);
  } catch (err) {
    unexpected.push(`undecodable reply from ${rinfo.address}: ${err.message}`);
    return;
  }
  if (m.op !== BOOTREPLY) return; // our own broadcasts, or another client's
  const c = byXid.get(m.xid);
  if (!c || !m.chaddr.equals(c.chaddr)) return void unexpected.push(`reply xid ${m.xid.toString(16)} for no client of ours`);
  const a = { t, type: m.opts.messageType, yiaddr: m.yiaddr, siaddr: m.siaddr, file: m.file, bootfile: m.opts.bootfile, serverId: m.opts.serverId, leaseTime: m.opts.leaseTime, vendorClass: m.opts.vendorClass, port: rinfo.port };
  if (a.type === MSG.OFFER) {
    c.offers.push(a);
    if (c.offers.length === 1) {
      c.tries = 1;
      c.nextTry = backoff(c);
      void request(c);
    }
  } else if (a.type === MSG.ACK) {
    c.acks.push(a);
    c.nextTry = Infinity;
  } else unexpected.push(`${c.mac}: message type ${a.type}`);
});

// Sending: a 5 ms tick sends what is due (first DISCOVERs on schedule, retransmissions on timeout).
const t0 = performance.now();
let next = 0;
await new Promise((resolve) => {
  const tick = setInterval(() => {
    const now = performance.now() - t0;
    while (next < clients.length && clients[next].at <= now) {
      const c = clients[next++];
      c.tries = 1;
      c.nextTry = backoff(c);
      void discover(c);
    }
    for (const c of clients.slice(0, next)) {
      if (c.nextTry > performance.now()) continue;
      if (c.tries >= cfg.tries) { c.nextTry = Infinity; continue; }
      c.tries++;
      c.nextTry = backoff(c);
      void (c.offers.length ? request(c) : discover(c));
    }
    const pending = clients.some((c) => c.nextTry !== Infinity || c.at > now);
    if (!pending) {
      clearInterval(tick);
      setTimeout(resolve, cfg.graceMs); // late duplicates still count
    }
  }, 5);
});
sock.close();

// ——— checks ———
const problems = [...unexpected];
const inPool = (ip) => ipInt(ip) >= ipInt(pool.first) && ipInt(ip) <= ipInt(pool.last);
const owner = new Map();
for (const c of clients) {
  const p = (s) => problems.push(`${c.mac}: ${s}`);
  if (!c.offers.length) { p(`no OFFER to ${c.sent.discover} DISCOVER`); continue; }
  if (!c.acks.length) p(`no ACK to ${c.sent.request} REQUEST`);
  if (c.offers.length > c.sent.discover) p(`${c.offers.length} OFFERs to ${c.sent.discover} DISCOVERs`);
  if (c.acks.length > c.sent.request) p(`${c.acks.length} ACKs to ${c.sent.request} REQUESTs`);
  const file = c.ipxe ? expect.ipxe : expect.files[c.arch];
  for (const a of [...c.offers, ...c.acks]) {
    const what = a.type === MSG.OFFER ? 'OFFER' : 'ACK';
    if (a.serverId !== server) p(`${what} server id ${a.serverId}`);
    if (a.bootfile !== file) p(`${what} boot file ${a.bootfile}, expected ${file} (arch ${c.arch}${c.ipxe ? ', iPXE' : ''})`);
    if (a.siaddr !== (expect.nextServer ?? server)) p(`${what} next-server ${a.siaddr}`);
    if (a.vendorClass !== 'PXEClient') p(`${what} option 60 ${a.vendorClass}`);
    if (mode === 'proxy' && a.yiaddr !== '0.0.0.0') p(`proxy ${what} yiaddr ${a.yiaddr}`);
    if (mode === 'proxy' && what === 'ACK' && a.port !== 4011) p(`proxy ACK from port ${a.port}`);
    if (mode === 'full' && a.leaseTime === undefined) p(`${what} without a lease time`);
  }
  if (mode !== 'full') continue;
  const ips = new Set([...c.offers, ...c.acks].map((a) => a.yiaddr));
  if (ips.size !== 1) p(`offered/acked several addresses: ${[...ips].join(' ')}`);
  const ip = c.offers[0].yiaddr;
  if (!inPool(ip)) p(`address ${ip} outside the pool`);
  if (owner.has(ip)) p(`address ${ip} also given to ${owner.get(ip)}`);
  owner.set(ip, c.mac);
}

const pct = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (f) => (s.length ? Math.round(s[Math.min(s.length - 1, Math.ceil(f * s.length) - 1)] * 10) / 10 : null);
  return { n: s.length, p50: q(0.5), p99: q(0.99), max: q(1) };
};
const sum = (f) => clients.reduce((a, c) => a + f(c), 0);
process.stdout.write(JSON.stringify({
  mode, macs: clients.length, durationMs: Math.round(performance.now() - t0),
  sent: { discover: sum((c) => c.sent.discover), request: sum((c) => c.sent.request) },
  answered: { offer: clients.filter((c) => c.offers.length).length, ack: clients.filter((c) => c.acks.length).length },
  replies: { offer: sum((c) => c.offers.length), ack: sum((c) => c.acks.length) },
  retransmitted: clients.filter((c) => c.sent.discover + c.sent.request > (c.dup ? 3 : 2)).length,
  duplicated: clients.filter((c) => c.dup).length,
  latencyMs: {
    offer: pct(clients.filter((c) => c.offers.length).map((c) => c.offers[0].t - c.firstDiscover)),
    ack: pct(clients.filter((c) => c.acks.length).map((c) => c.acks[0].t - c.firstRequest)),
  },
  addresses: mode === 'full' ? owner.size : 0,
  problems,
  // With "perMac": true, one row per client: answered?, latencies, the address offered.
  ...(cfg.perMac ? {
    perMac: clients.map((c) => ({
      mac: c.mac, arch: c.arch, ipxe: c.ipxe, sent: c.sent, offers: c.offers.length, acks: c.acks.length,
      offerMs: c.offers.length ? Math.round((c.offers[0].t - c.firstDiscover) * 10) / 10 : null,
      ackMs: c.acks.length ? Math.round((c.acks[0].t - c.firstRequest) * 10) / 10 : null,
      ip: c.offers[0]?.yiaddr ?? null, file: c.offers[0]?.bootfile ?? null,
    })),
  } : {}),
}) + '\n');
