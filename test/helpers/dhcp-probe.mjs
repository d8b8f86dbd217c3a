#!/usr/bin/env node
// A scripted DHCP client for tests, run inside a client namespace:
//   ip netns exec NS node dhcp-probe.mjs '{"iface","port","send":[{"hex","to","port"}],"untilXid","timeoutMs"}'
// Binds UDP `port` (68) on the interface (SO_BINDTODEVICE via the addon), sends each message in
// order (or those in the JSON file `sendFile`), and prints every datagram received as
// {"hex","from","port"} lines until `untilCount` (1) replies with xid `untilXid` arrived (or the
// timeout), resending the last message every `repeatLastMs` if set. Exit 0 when they arrived, 2 otherwise.
import dgram from 'node:dgram';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');
const { loadNative } = await import(path.join(ROOT, 'dist/src/native/addon.js'));
const cfg = JSON.parse(process.argv[2]);
const s = dgram.createSocket('udp4');
await new Promise((r) => s.bind({ fd: loadNative().udpSocket(cfg.iface, cfg.port ?? 68, { broadcast: true, reuseAddr: true }) }, r));
const done = (code) => s.close(() => process.exit(code));
const timer = setTimeout(() => done(2), cfg.timeoutMs ?? 10_000);
s.on('message', (m, r) => {
  process.stdout.write(JSON.stringify({ hex: m.toString('hex'), from: r.address, port: r.port }) + '\n');
  if (m.length >= 8 && m.readUInt32BE(4) === cfg.untilXid && ++matched >= (cfg.untilCount ?? 1)) {
    clearTimeout(timer);
    done(0);
  }
});
const { readFileSync } = await import('node:fs');
const messages = cfg.sendFile ? JSON.parse(readFileSync(cfg.sendFile, 'utf8')) : cfg.send;
let matched = 0;
const sendOne = (m) => new Promise((r) => s.send(Buffer.from(m.hex, 'hex'), m.port ?? 67, m.to ?? '255.255.255.255', r));
for (const m of messages) await sendOne(m);
// Like a real client, retransmit the last message (e.g. after a burst the server's buffer dropped).
if (cfg.repeatLastMs) setInterval(() => sendOne(messages.at(-1)), cfg.repeatLastMs).unref();
