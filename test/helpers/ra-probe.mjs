#!/usr/bin/env node
// Sends one Router Solicitation on IFACE (to ff02::2) and prints the first Router Advertisement
// received as {"hex","from"}; exit 2 if none came in 15 one-second reads. Run inside a namespace.
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');
const { loadNative } = await import(path.join(ROOT, 'dist/src/native/addon.js'));
const { encodeRouterSolicit } = await import(path.join(ROOT, 'dist/src/ra/packet.js'));
const n = loadNative();
const iface = process.argv[2];
const fd = n.icmp6Socket(iface, [134]);
n.icmp6Send(fd, n.ifIndex(iface), 'ff02::2', encodeRouterSolicit());
for (let i = 0; i < 15; i++) {
  const m = n.icmp6Recv(fd); // blocks ≤ 1 s (SO_RCVTIMEO)
  if (m) {
    process.stdout.write(JSON.stringify({ hex: m.data.toString('hex'), from: m.from }) + '\n');
    process.exit(0);
  }
}
process.exit(2);
