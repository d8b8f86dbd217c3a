import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientMsg, events, MSG, OPT, probe, pxeOptions, requireClients, startRunner, udhcpcOnce, udhcpcScript, enc, type Runner } from '../helpers/dhcp.js';
import { prng } from '../helpers/expect.js';
import { bridge, Netns, plug, stop } from '../helpers/netns.js';
import { tempDir } from '../helpers/server.js';

// Full mode on br0 of a server namespace; clients in their own namespaces behind veths.
const SERVER = '10.231.0.1';
const SCRIPT_URL = 'http://10.231.0.1:8080/boot/ipxe';

describe('DHCP full mode (real clients in namespaces)', () => {
  const tmp = tempDir('df-dhcp-');
  const metaDb = path.join(tmp.dir, 'meta.sqlite');
  const made: Netns[] = [];
  let srv: Netns, c1: Netns, c2: Netns, c3: Netns, runner: Runner;
  const cfg = {
    dhcp: {
      mode: 'full', interface: 'br0', serverIp: SERVER,
      pool: { first: '10.231.0.100', last: '10.231.0.150', netmask: '255.255.255.0', router: SERVER, dns: [SERVER], leaseSeconds: 3600, meta: metaDb },
    },
    scriptUrl: SCRIPT_URL,
    logLevel: 'debug',
  };
  const script = udhcpcScript(tmp.dir);

  beforeAll(async () => {
    requireClients();
    made.push((srv = new Netns('dhcp')), (c1 = new Netns('dhcpc')), (c2 = new Netns('dhcpc')), (c3 = new Netns('dhcpc')));
    bridge(srv, 'br0', `${SERVER}/24`);
    plug(srv, 'br0', c1, 'eth0', '52:54:00:aa:00:01');
    plug(srv, 'br0', c2, 'eth0', '52:54:00:aa:00:02');
    plug(srv, 'br0', c3, 'eth0', '52:54:00:aa:00:03');
    runner = await startRunner(srv, cfg);
  });

  afterAll(async () => {
    await runner?.close();
    for (const n of made) n.delete();
    tmp.cleanup();
  });

  it('gives udhcpc an address from the pool, with mask, router and lease', async () => {
    const out = path.join(tmp.dir, 'c1.out');
    expect(await udhcpcOnce(c1, 'eth0', script, out)).toBe(0);
    const bound = events(out).find((e) => e.event === 'bound');
    expect(bound).toMatchObject({ serverid: SERVER, subnet: '255.255.255.0', lease: '3600', boot_file: '' });
    expect(bound!.ip).toMatch(/^10\.231\.0\.(1[0-4]\d|150)$/);
  });

  it('renews a bound lease (udhcpc SIGUSR1 → unicast REQUEST → ACK)', async () => {
    const out = path.join(tmp.dir, 'c2.out');
    const proc = spawn('ip', ['netns', 'exec', c2.name, 'busybox', 'udhcpc', '-f', '-i', 'eth0', '-t', '3', '-T', '1', '-A', '1', '-s', script], {
      env: { ...process.env, DF_OUT: out, DF_CONFIGURE: '1' }, stdio: 'ignore',
    });
    const acks = () => runner.events.lines.filter((e) => e.mac === '52:54:00:aa:00:02' && e.kind === 'ack').length;
    try {
      await runner.events.waitFor((e) => e.mac === '52:54:00:aa:00:02' && e.kind === 'ack', 'first ack');
      await until(() => events(out).some((e) => e.event === 'bound'), 'bound');
      proc.kill('SIGUSR1');
      await until(() => acks() >= 2 && events(out).some((e) => e.event === 'renew'), 'renew');
      const [bound, renew] = [events(out).find((e) => e.event === 'bound')!, events(out).find((e) => e.event === 'renew')!];
      expect(renew.ip).toBe(bound.ip);
    } finally {
      await stop(proc);
    }
  });

  it('keeps leases across a restart: the same MAC (now via dhclient) gets the same address', async () => {
    const first = events(path.join(tmp.dir, 'c1.out')).find((e) => e.event === 'bound')!.ip;
    await runner.close();
    const db = new Database(metaDb, { readonly: true });
    try {
      expect(db.prepare('SELECT ip, mac, state FROM dhcp_leases').all()).toContainEqual({ mac: '52:54:00:aa:00:01', ip: first, state: 'bound' });
    } finally {
      db.close();
    }
    runner = await startRunner(srv, cfg);
    const lease = path.join(tmp.dir, 'dhclient.lease');
    const r = await c1.runAsync('timeout', ['30', 'dhclient', '-1', '-sf', '/bin/true', '-lf', lease, '-pf', path.join(tmp.dir, 'dhclient.pid'), 'eth0']);
    try {
      expect(r.status, r.stderr).toBe(0);
      expect(readFileSync(lease, 'utf8')).toContain(`fixed-address ${first};`);
    } finally {
      c1.run('kill', [readFileSync(path.join(tmp.dir, 'dhclient.pid'), 'utf8').trim()], true);
    }
  });

  it('ignores a REQUEST naming another server, NAKs a wrong INIT-REBOOT', async () => {
    const mac = '52:54:00:aa:00:03';
    const off = await probe(c3, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.DISCOVER, mac, xid: 1 }) }], untilXid: 1 });
    const offered = off.replies.find((r) => r.msg.opts.messageType === MSG.OFFER)!.msg.yiaddr;
    // SELECTING with someone else's server id: silence (RFC 2131 §4.3.2); the DISCOVER after it is answered.
    const other = await probe(c3, {
      iface: 'eth0',
      send: [
        { hex: clientMsg({ type: MSG.REQUEST, mac, xid: 2, options: [[OPT.SERVER_ID, enc.ip('10.231.0.99')], [OPT.REQUESTED_IP, enc.ip(offered)]] }) },
        { hex: clientMsg({ type: MSG.DISCOVER, mac, xid: 3 }) },
      ],
      untilXid: 3,
    });
    expect(other.arrived).toBe(true);
    expect(other.replies.map((r) => r.msg.xid)).not.toContain(2);
    // Bind, then INIT-REBOOT asking for another address of the pool, and one off the network.
    const ok = await probe(c3, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.REQUEST, mac, xid: 4, options: [[OPT.SERVER_ID, enc.ip(SERVER)], [OPT.REQUESTED_IP, enc.ip(offered)]] }) }], untilXid: 4 });
    expect(ok.replies.find((r) => r.msg.xid === 4)?.msg.opts.messageType).toBe(MSG.ACK);
    const wrong = offered === '10.231.0.149' ? '10.231.0.148' : '10.231.0.149';
    for (const [xid, ip] of [[5, wrong], [6, '192.168.77.5']] as const) {
      const nak = await probe(c3, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.REQUEST, mac, xid, options: [[OPT.REQUESTED_IP, enc.ip(ip)]] }) }], untilXid: xid });
      const m = nak.replies.find((r) => r.msg.xid === xid)!.msg;
      expect(m.opts.messageType).toBe(MSG.NAK);
      expect(m.yiaddr).toBe('0.0.0.0');
      expect(m.opts.serverId).toBe(SERVER);
    }
    // The right INIT-REBOOT is ACKed.
    const re = await probe(c3, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.REQUEST, mac, xid: 7, options: [[OPT.REQUESTED_IP, enc.ip(offered)]] }) }], untilXid: 7 });
    expect(re.replies.find((r) => r.msg.xid === 7)?.msg).toMatchObject({ yiaddr: offered, opts: { messageType: MSG.ACK } });
  });

  it('adds boot options for PXE clients: arch → binary, iPXE → script URL with 175.176', async () => {
    const mac = '52:54:00:aa:00:13';
    const r = await probe(c3, {
      iface: 'eth0',
      send: [
        { hex: clientMsg({ type: MSG.DISCOVER, mac, xid: 11, options: pxeOptions(7) }) },
        { hex: clientMsg({ type: MSG.DISCOVER, mac, xid: 12, options: pxeOptions(0, true) }) },
      ],
      untilXid: 12,
    });
    const efi = r.replies.find((x) => x.msg.xid === 11)!.msg;
    expect(efi).toMatchObject({ file: 'snponly.efi', siaddr: SERVER, opts: { messageType: MSG.OFFER, vendorClass: 'PXEClient', bootfile: 'snponly.efi', tftpServer: SERVER } });
    expect(efi.yiaddr).toMatch(/^10\.231\.0\./);
    const ipxe = r.replies.find((x) => x.msg.xid === 12)!.msg;
    expect(ipxe.opts.bootfile).toBe(SCRIPT_URL);
    expect(ipxe.opts.ipxe?.get(176)).toEqual(Buffer.from([1]));
  });

  it('survives 2000 random and truncated datagrams on 67 and 4011, then serves a real client', async () => {
    const rnd = prng(67);
    const valid = Buffer.from(clientMsg({ type: MSG.DISCOVER, mac: '52:54:00:aa:00:99', xid: 99, options: pxeOptions(0) }), 'hex');
    const junk = Array.from({ length: 2000 }, (_, i) => {
      const b = i % 2 ? Buffer.from(valid.subarray(0, Math.floor(rnd() * valid.length))) : Buffer.from(Array.from({ length: Math.floor(rnd() * 600) }, () => Math.floor(rnd() * 256)));
      if (i % 2 && b.length > 240) b[240 + Math.floor(rnd() * (b.length - 240))] = Math.floor(rnd() * 256);
      return { hex: b.toString('hex'), port: i % 4 < 2 ? 67 : 4011, to: i % 4 < 2 ? '255.255.255.255' : SERVER };
    });
    const file = path.join(tmp.dir, 'junk.json');
    writeFileSync(file, JSON.stringify([...junk, { hex: clientMsg({ type: MSG.DISCOVER, mac: '52:54:00:aa:00:98', xid: 98 }) }]));
    c3.run('ip', ['addr', 'replace', '10.231.0.250/24', 'dev', 'eth0']);
    try {
      expect((await probe(c3, { iface: 'eth0', sendFile: file, untilXid: 98, timeoutMs: 30_000, repeatLastMs: 1000 })).arrived).toBe(true);
      // They reached the server and were dropped there (some may be lost in the socket buffer).
      await until(() => runner.stderr().split('malformed message dropped').length > 100, 'drop logs');
    } finally {
      c3.run('ip', ['addr', 'flush', 'dev', 'eth0']);
    }
    const out = path.join(tmp.dir, 'c1-after-fuzz.out');
    c1.run('ip', ['addr', 'flush', 'dev', 'eth0']);
    expect(await udhcpcOnce(c1, 'eth0', script, out)).toBe(0);
    expect(events(out).some((e) => e.event === 'bound')).toBe(true);
  });
});

describe('DHCP on a multi-NIC server: only the boot interface is answered', () => {
  const tmp = tempDir('df-dhcp-');
  const made: Netns[] = [];
  let runner: Runner | undefined;
  const script = udhcpcScript(tmp.dir);

  afterAll(async () => {
    await runner?.close();
    for (const n of made) n.delete();
    tmp.cleanup();
  });

  it('a client on br1 gets nothing, a client on br0 gets an address', async () => {
    requireClients();
    const srv = new Netns('dhcp2');
    const other = new Netns('dhcpc');
    const boot = new Netns('dhcpc');
    made.push(srv, other, boot);
    bridge(srv, 'br0', '10.233.0.1/24');
    bridge(srv, 'br1', '10.233.1.1/24');
    plug(srv, 'br1', other, 'eth0', '52:54:00:bb:00:01');
    plug(srv, 'br0', boot, 'eth0', '52:54:00:bb:00:02');
    runner = await startRunner(srv, {
      dhcp: { mode: 'full', interface: 'br0', serverIp: '10.233.0.1', pool: { first: '10.233.0.100', last: '10.233.0.110', netmask: '255.255.255.0', leaseSeconds: 600, meta: path.join(tmp.dir, 'meta.sqlite') } },
      scriptUrl: 'http://10.233.0.1/boot/ipxe',
    });
    const outOther = path.join(tmp.dir, 'other.out');
    expect(await udhcpcOnce(other, 'eth0', script, outOther, ['-t', '2'])).not.toBe(0);
    expect(events(outOther).some((e) => e.event === 'bound')).toBe(false);
    const outBoot = path.join(tmp.dir, 'boot.out');
    expect(await udhcpcOnce(boot, 'eth0', script, outBoot)).toBe(0);
    expect(events(outBoot).find((e) => e.event === 'bound')?.ip).toMatch(/^10\.233\.0\.1(0\d|10)$/);
    expect(runner.events.lines.filter((e) => e.mac === '52:54:00:bb:00:01')).toEqual([]);
  });
});

describe('DHCP full mode, two servers on one database (real clients at once)', () => {
  const tmp = tempDir('df-dhcp-');
  const made: Netns[] = [];
  const runners: Runner[] = [];
  const script = udhcpcScript(tmp.dir);

  afterAll(async () => {
    for (const r of runners) await r.close();
    for (const n of made) n.delete();
    tmp.cleanup();
  });

  it('both answer every DISCOVER, never with one address for two clients; an old lease file is kept; the rest get nothing', async () => {
    requireClients();
    const srv = new Netns('dhcp3');
    made.push(srv);
    bridge(srv, 'br0', '10.234.0.1/24');
    srv.run('ip', ['addr', 'add', '10.234.0.2/24', 'dev', 'br0']);
    const clients = Array.from({ length: 6 }, (_, i) => {
      const c = new Netns('dhcpc');
      made.push(c);
      plug(srv, 'br0', c, 'eth0', `52:54:00:cc:00:0${i + 1}`);
      return c;
    });
    // Server A upgrades from a release with a lease file: the first client's binding lives on.
    const old = path.join(tmp.dir, 'dhcp-leases.json');
    writeFileSync(old, JSON.stringify({ version: 1, leases: [{ mac: '52:54:00:cc:00:01', ip: '10.234.0.103', state: 'bound', expires: Date.now() + 3600_000 }] }));
    const meta = path.join(tmp.dir, 'meta.sqlite');
    const pool = { first: '10.234.0.100', last: '10.234.0.103', netmask: '255.255.255.0', leaseSeconds: 600, meta };
    runners.push(await startRunner(srv, { dhcp: { mode: 'full', interface: 'br0', serverIp: '10.234.0.1', pool: { ...pool, importFile: old } }, scriptUrl: 'http://10.234.0.1/boot/ipxe' }));
    runners.push(await startRunner(srv, { dhcp: { mode: 'full', interface: 'br0', serverIp: '10.234.0.2', pool }, scriptUrl: 'http://10.234.0.2/boot/ipxe' }));
    expect(existsSync(`${old}.imported`)).toBe(true);

    const outs = clients.map((_, i) => path.join(tmp.dir, `two-${i + 1}.out`));
    const codes = await Promise.all(clients.map((c, i) => udhcpcOnce(c, 'eth0', script, outs[i]!)));
    const bound = outs.map((o) => events(o).find((e) => e.event === 'bound'));
    expect(bound[0]?.ip).toBe('10.234.0.103');
    const ips = bound.filter((b) => b !== undefined).map((b) => b.ip);
    // Four addresses: four clients bound, each its own; the other two heard no offer and gave up.
    expect(ips).toHaveLength(4);
    expect(new Set(ips).size).toBe(4);
    expect(codes.filter((c) => c === 0)).toHaveLength(4);
    const offers = (r: Runner) => r.events.lines.filter((e) => e.kind === 'offer');
    // Both servers answered the broadcasts, and for one client both offered the same address.
    expect(offers(runners[0]!).length).toBeGreaterThan(0);
    expect(offers(runners[1]!).length).toBeGreaterThan(0);
    for (const e of [...offers(runners[0]!), ...offers(runners[1]!)]) {
      const i = Number(String(e.mac).slice(-2)) - 1;
      expect(e.ip).toBe(bound[i]?.ip);
    }
    const db = new Database(meta, { readonly: true });
    try {
      const rows = db.prepare("SELECT mac, ip FROM dhcp_leases WHERE state = 'bound' ORDER BY ip").all() as Array<{ mac: string; ip: string }>;
      expect(rows.map((r) => r.ip)).toEqual([...ips].sort());
      expect(new Set(rows.map((r) => r.mac)).size).toBe(4);
    } finally {
      db.close();
    }
  });
});

async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  for (let waited = 0; !cond(); waited += 100) {
    if (waited > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

