import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeNd, ND_ROUTER_ADVERT } from '../../src/ra/packet.js';
import { requireClients, startRunner, type Runner } from '../helpers/dhcp.js';
import { bridge, Netns, plug } from '../helpers/netns.js';
import { ROOT } from '../helpers/server.js';

describe('IPv6 router advertisement responder', () => {
  const made: Netns[] = [];
  let runner: Runner | undefined;

  afterAll(async () => {
    await runner?.close();
    for (const n of made) n.delete();
  });

  it('answers a Router Solicitation with lifetime 0, no prefix, M = O = 0', async () => {
    requireClients();
    const srv = new Netns('ra');
    const cli = new Netns('rac');
    made.push(srv, cli);
    bridge(srv, 'br0', '10.234.0.1/24');
    plug(srv, 'br0', cli, 'eth0', '52:54:00:dd:00:01');
    // Long interval: the answer must come from the solicitation, not from the periodic timer.
    runner = await startRunner(srv, { ra: { interface: 'br0', intervalSeconds: 600 } });
    const r = await cli.runAsync(process.execPath, [path.join(ROOT, 'test/helpers/ra-probe.mjs'), 'eth0']);
    expect(r.status, r.stderr).toBe(0);
    const { hex, from } = JSON.parse(r.stdout) as { hex: string; from: string };
    const m = decodeNd(Buffer.from(hex, 'hex'));
    expect(m.type).toBe(ND_ROUTER_ADVERT);
    expect(m.advert).toMatchObject({ routerLifetime: 0, managed: false, other: false });
    expect(m.options.map((o) => o.type)).toEqual([1]); // source link-layer address only, no prefix
    expect(from).toMatch(/^fe80:/);
  });
});
