import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientMsg, enc, events, MSG, OPT, probe, pxeOptions, requireClients, startRunner, udhcpcOnce, udhcpcScript, type Runner } from '../helpers/dhcp.js';
import { bridge, Netns, plug, stop } from '../helpers/netns.js';
import { tempDir } from '../helpers/server.js';
import type { ChildProcess } from 'node:child_process';

// proxyDHCP beside another DHCP server: busybox udhcpd (10.232.0.1) hands out addresses on br0,
// deskfuse (10.232.0.2 on the same bridge) only adds boot information for PXE clients.
const UDHCPD = '10.232.0.1';
const OURS = '10.232.0.2';
const SCRIPT_URL = `http://${OURS}:8080/boot/ipxe`;

describe('proxyDHCP beside busybox udhcpd', () => {
  const tmp = tempDir('df-dhcp-');
  const made: Netns[] = [];
  let srv: Netns, plain: Netns, pxe: Netns, udhcpd: ChildProcess, runner: Runner;
  const script = udhcpcScript(tmp.dir);

  beforeAll(async () => {
    requireClients();
    made.push((srv = new Netns('dhcpp')), (plain = new Netns('dhcpc')), (pxe = new Netns('dhcpc')));
    bridge(srv, 'br0', `${UDHCPD}/24`);
    srv.run('ip', ['addr', 'add', `${OURS}/24`, 'dev', 'br0']);
    plug(srv, 'br0', plain, 'eth0', '52:54:00:cc:00:01');
    plug(srv, 'br0', pxe, 'eth0', '52:54:00:cc:00:02');
    const conf = path.join(tmp.dir, 'udhcpd.conf');
    writeFileSync(conf, `start 10.232.0.50\nend 10.232.0.60\ninterface br0\nlease_file ${tmp.dir}/udhcpd.leases\noption subnet 255.255.255.0\nopt lease 600\n`);
    writeFileSync(path.join(tmp.dir, 'udhcpd.leases'), '');
    udhcpd = srv.spawn('busybox', ['udhcpd', '-f', '-a', '100', conf]);
    runner = await startRunner(srv, { dhcp: { mode: 'proxy', interface: 'br0', serverIp: OURS }, scriptUrl: SCRIPT_URL });
  });

  afterAll(async () => {
    await runner?.close();
    if (udhcpd) await stop(udhcpd);
    for (const n of made) n.delete();
    tmp.cleanup();
  });

  it('a PXE client gets its address from udhcpd and its boot file from us', async () => {
    const r = await probe(pxe, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.DISCOVER, mac: '52:54:00:cc:00:02', xid: 21, options: pxeOptions(0) }) }], untilXid: 21, untilCount: 2 });
    expect(r.arrived).toBe(true);
    const theirs = r.replies.find((x) => x.msg.opts.serverId === UDHCPD)!.msg;
    const ours = r.replies.find((x) => x.msg.opts.serverId === OURS)!.msg;
    expect(theirs.yiaddr).toMatch(/^10\.232\.0\.(5\d|60)$/);
    expect(ours).toMatchObject({ yiaddr: '0.0.0.0', siaddr: OURS, file: 'undionly.kpxe', opts: { messageType: MSG.OFFER, vendorClass: 'PXEClient', bootfile: 'undionly.kpxe' } });
    expect(ours.opts.leaseTime).toBeUndefined();
    expect(ours.options.get(OPT.UUID)).toEqual(Buffer.concat([Buffer.from([0]), Buffer.alloc(16, 0x5a)]));
    expect(ours.options.get(OPT.VENDOR)?.toString('hex')).toBe('060108ff');
  });

  it('a non-PXE client (udhcpc) gets its address from udhcpd and nothing from us', async () => {
    const out = path.join(tmp.dir, 'plain.out');
    expect(await udhcpcOnce(plain, 'eth0', script, out)).toBe(0);
    expect(events(out).find((e) => e.event === 'bound')).toMatchObject({ serverid: UDHCPD, boot_file: '' });
    // Something after it that we do answer, so "nothing" is not "not yet".
    await probe(pxe, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.DISCOVER, mac: '52:54:00:cc:00:03', xid: 22, options: pxeOptions(7) }) }], untilXid: 22, untilCount: 2 });
    await runner.events.waitFor((e) => e.mac === '52:54:00:cc:00:03', 'the PXE client after it');
    expect(runner.events.lines.filter((e) => e.mac === '52:54:00:cc:00:01')).toEqual([]);
  });

  it('iPXE gets the script URL and no-pxedhcp', async () => {
    const r = await probe(pxe, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.DISCOVER, mac: '52:54:00:cc:00:04', xid: 23, options: pxeOptions(0, true) }) }], untilXid: 23, untilCount: 2 });
    const ours = r.replies.find((x) => x.msg.opts.serverId === OURS)!.msg;
    expect(ours.opts.bootfile).toBe(SCRIPT_URL);
    expect(ours.file).toBe(SCRIPT_URL);
    expect(ours.opts.ipxe?.get(176)).toEqual(Buffer.from([1]));
  });

  it('ACKs a PXE boot-server REQUEST on 4011, unicast back to the sender', async () => {
    pxe.run('ip', ['addr', 'replace', '10.232.0.200/24', 'dev', 'eth0']);
    try {
      const req = clientMsg({ type: MSG.REQUEST, mac: '52:54:00:cc:00:02', xid: 24, ciaddr: '10.232.0.200', broadcast: false, options: pxeOptions(9) });
      const r = await probe(pxe, { iface: 'eth0', send: [{ hex: req, to: OURS, port: 4011 }], untilXid: 24 });
      const ack = r.replies.find((x) => x.msg.xid === 24)!;
      // From our 4011 socket (its source address is the kernel's pick for br0, here the primary .1).
      expect(ack.port).toBe(4011);
      expect(ack.msg).toMatchObject({ file: 'snponly.efi', opts: { messageType: MSG.ACK, serverId: OURS, vendorClass: 'PXEClient' } });
      await runner.events.waitFor((e) => e.kind === 'pxe-ack' && e.ip === '10.232.0.200', 'pxe-ack event');
    } finally {
      pxe.run('ip', ['addr', 'flush', 'dev', 'eth0']);
    }
  });

  it('does not answer a PXE REQUEST addressed to udhcpd', async () => {
    const mac = '52:54:00:cc:00:05';
    const r = await probe(pxe, {
      iface: 'eth0',
      send: [
        { hex: clientMsg({ type: MSG.REQUEST, mac, xid: 25, options: [...pxeOptions(0), [OPT.SERVER_ID, enc.ip(UDHCPD)], [OPT.REQUESTED_IP, enc.ip('10.232.0.59')]] }) },
        { hex: clientMsg({ type: MSG.DISCOVER, mac, xid: 26, options: pxeOptions(0) }) },
      ],
      untilXid: 26, untilCount: 2,
    });
    expect(r.replies.filter((x) => x.msg.xid === 25 && x.msg.opts.serverId === OURS)).toEqual([]);
    // …but its address is noted, so TFTP transfers from it are attributed to the MAC.
    await runner.events.waitFor((e) => e.kind === 'address' && e.mac === mac && e.ip === '10.232.0.59', 'address of the REQUEST');
  });
});
