import path from 'node:path';
import { expect } from 'vitest';
import { makeDisk, patch, prng } from './disk.js';
import { cli } from './server.js';

const MiB = 1024 * 1024;

/** What tests of the caching contract (and the site cache in front of it) work on. */
export interface SiteFixture {
  image: string;
  /** v1 import, v2 publish on main (alice and bob follow it), v3 published on desktops/bob only. */
  versions: { main1: number; main2: number; bob: number };
  tokens: { admin: string; alice: string; alice2: string; bob: string; revoked: string };
}

/**
 * On a running server: image `os` (8 MiB, 1 MiB chunks) with v1, v2 on main, and v3 on bob's line
 * alone; desktops alice and bob; two tokens of alice, one of bob, and one of alice revoked.
 */
export async function makeSite(url: string, admin: string, dir: string): Promise<SiteFixture> {
  const env = { DESKFUSE_SERVER: url, DESKFUSE_TOKEN: admin };
  const run = async (args: string[]) => {
    const r = await cli(args, env);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.stdout.trim();
  };
  const img = path.join(dir, 'site.img');
  const rand = prng(77);
  makeDisk(img, 8 * MiB, [{ at: 0, data: rand(3 * MiB) }, { at: 5 * MiB, data: rand(MiB) }]);
  await run(['image', 'create', 'os', '--from', img, '--chunk-size', String(MiB)]);
  patch(img, 2 * MiB + 4096, rand(300 * 1024));
  await run(['image', 'publish', 'os', '--from', img]);
  await run(['desktop', 'create', 'alice', '--image', 'os']);
  await run(['desktop', 'create', 'bob', '--image', 'os']);
  patch(img, 6 * MiB, rand(200 * 1024));
  await run(['image', 'publish', 'os', '--from', img, '--ref', 'desktops/bob']);
  const mint = async (scope: string) => {
    const r = await fetch(`${url}/api/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ scope }) });
    expect(r.status).toBe(201);
    return (await r.json()) as { token: string; id: string };
  };
  const revoked = await mint('desktop:alice');
  expect((await fetch(`${url}/api/v1/tokens/${revoked.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } })).status).toBe(200);
  return {
    image: 'os',
    versions: { main1: 1, main2: 2, bob: 3 },
    tokens: { admin, alice: (await mint('desktop:alice')).token, alice2: (await mint('desktop:alice')).token, bob: (await mint('desktop:bob')).token, revoked: revoked.token },
  };
}
