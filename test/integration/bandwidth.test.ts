import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAppliance, type Appliance } from '../../server/appliance.js';
import { loadServerConfig } from '../../src/config/server.js';
import { makeDisk, prng, sha256, sha256Prefix } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let tmp: ReturnType<typeof tempDir>;
let ap: Appliance;
let url = '';
let token = '';
const f = (n: string) => path.join(tmp.dir, n);
const admin = () => ({ DESKFUSE_SERVER: url, DESKFUSE_TOKEN: token });
const metric = async (name: string) =>
  Number(new RegExp(`^${name} (\\d+)$`, 'm').exec((await ap.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${token}` } })).body)?.[1] ?? NaN);

beforeAll(async () => {
  tmp = tempDir('df-bandwidth-');
  // 40 Mbit/s = 5 MB/s: the 4 MiB of chunks below need the bucket refilled many times
  writeFileSync(f('config.json'), JSON.stringify({ admission: { maxMbitPerSecond: 40 } }));
  ap = await openAppliance(loadServerConfig({ flags: { data: f('data'), logLevel: 'silent' }, file: f('config.json') }));
  url = await ap.app.listen({ host: '127.0.0.1', port: 0 });
  token = readFileSync(f('data/admin.token'), 'utf8').trim();
  makeDisk(f('base.img'), SIZE, [{ at: 0, data: prng(9)(4 * MiB) }]);
  expect((await cli(['image', 'create', 'win', '--from', f('base.img')], admin())).code).toBe(0);
  expect((await cli(['desktop', 'create', 'd1', '--image', 'win'], admin())).code).toBe(0);
}, 60_000);
afterAll(async () => {
  await ap?.close();
  tmp?.cleanup();
});

describe('bandwidth cap (admission.maxMbitPerSecond): a token bucket over the bodies sent from files', () => {
  it('an agent provisioned under the cap gets every byte; the sender waited for its bucket', async () => {
    const sent0 = await metric('deskfuse_sender_bytes_total');
    const waits0 = await metric('deskfuse_sender_bandwidth_waits_total');
    const dt = (await cli(['desktop', 'token', 'd1'], admin())).stdout.trim();
    writeFileSync(f('d1.img'), '');
    truncateSync(f('d1.img'), SIZE + 4 * MiB);
    const r = await cli(['agent', 'sync', '--disk', f('d1.img'), '--desktop', 'd1', '--json'], { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: dt });
    expect(r.code, r.stderr).toBe(0);
    expect(sha256Prefix(f('d1.img'), SIZE)).toBe(sha256(f('base.img')));
    // the chunk packs went out on the sender thread (4 MiB of random data does not compress)
    expect((await metric('deskfuse_sender_bytes_total')) - sent0).toBeGreaterThan(4 * MiB);
    expect(await metric('deskfuse_sender_bandwidth_waits_total')).toBeGreaterThan(waits0);
  }, 60_000);

  it('a cap that is not a number of Mbit/s is refused at start, with the key named', () => {
    writeFileSync(f('bad.json'), JSON.stringify({ admission: { maxMbitPerSecond: -5 } }));
    expect(() => loadServerConfig({ flags: { data: f('data2') }, file: f('bad.json') })).toThrow(/admission\.maxMbitPerSecond/);
  });
});
