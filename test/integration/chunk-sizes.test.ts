import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from '../../src/image/geometry.js';
import { makeDisk, patch, prng, sha256, sha256Prefix, textish } from '../helpers/disk.js';
import { cli, tempDir } from '../helpers/server.js';
import { requireNbdClients, run, startVdiAppliance, type VdiAppliance } from '../helpers/vdi.js';

/**
 * Every chunk size `image create --chunk-size` accepts (the powers of two from MIN_CHUNK_SIZE to
 * MAX_CHUNK_SIZE) round-trips through create, publish, agent sync, agent commit, VDI commit and
 * export. Each commit writes into chunks that were all zero in the image, so the patch upload holds
 * whole-chunk records (at 4 MiB chunks: a whole 4 MiB chunk plus its record head in one record).
 */
const KiB = 1024;
const MiB = 1024 * KiB;
/** 5 chunks of the largest size; chunks 2 and 3 (8..16 MiB) are zero in the image at every size. */
const SIZE = 5 * MAX_CHUNK_SIZE;
const SIZES: number[] = [];
for (let c = MIN_CHUNK_SIZE; c <= MAX_CHUNK_SIZE; c *= 2) SIZES.push(c);
const label = (c: number) => (c >= MiB ? `${c / MiB}M` : `${c / KiB}K`);

let tmp: ReturnType<typeof tempDir>;
let srv: VdiAppliance;
let admin: Record<string, string>;
const f = (n: string) => path.join(tmp.dir, n);

const imageSha = (disk: string) => sha256Prefix(disk, SIZE); // the image region; the state area follows
const imageBytes = (disk: string) => readFileSync(disk).subarray(0, SIZE);

beforeAll(async () => {
  requireNbdClients();
  tmp = tempDir('df-chunk-sizes-');
  srv = await startVdiAppliance(f('data'));
  admin = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const r = prng(41);
  makeDisk(f('base.img'), SIZE, [
    { at: 0, data: r(300 * KiB) },
    { at: 4 * MiB + 12345, data: textish(r, 600 * KiB) },
    { at: SIZE - 64 * KiB, data: r(64 * KiB) },
  ]);
  copyFileSync(f('base.img'), f('v2.img'));
  patch(f('v2.img'), 4096 * 3, r(4096)); // one block inside a chunk
  patch(f('v2.img'), 4 * MiB + 500_000, textish(r, 100 * KiB)); // an edit across chunks
  patch(f('v2.img'), 2 * MiB, r(128 * KiB)); // new data in a hole (a zero chunk below 4 MiB chunks)
});
afterAll(async () => {
  await srv?.close();
  tmp?.cleanup();
});

/** An admin API call (the set-up steps around the ones under test need no CLI process each). */
async function api(method: string, url: string, body?: unknown): Promise<any> {
  const r = await fetch(`${srv.url}${url}`, {
    method, headers: { authorization: `Bearer ${srv.token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const j = await r.json();
  if (!r.ok) throw new Error(`${method} ${url}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

describe('chunk sizes', () => {
  it('the CLI refuses the sizes next to the accepted ones with a coded error, creating nothing', async () => {
    expect(SIZES.map(label)).toEqual(['4K', '8K', '16K', '32K', '64K', '128K', '256K', '512K', '1M', '2M', '4M']);
    for (const [bad, code] of [['2K', 'DF_ERR_BAD_REQUEST'], ['8M', 'DF_ERR_BAD_REQUEST'], ['48K', 'DF_ERR_GEOMETRY']] as const) {
      const c = await cli(['image', 'create', `bad-${bad.toLowerCase()}`, '--from', f('base.img'), '--chunk-size', bad, '--json'], admin);
      expect(c.code, bad).toBe(1);
      expect(c.json.error.code, bad).toBe(code);
      expect(c.stderr, bad).toMatch(/--chunk-size|chunkSize/); // the server's field, or the CLI argument it came from
    }
    expect((await api('GET', '/api/v1/images')).images.filter((i: { name: string }) => i.name.startsWith('bad-'))).toEqual([]);
  });

  // Concurrent: each size is its own image and desktop; most of the time is CLI processes starting.
  it.concurrent.each(SIZES.map((c) => [label(c), c] as const))('%s chunks: create, publish, sync, commit, VDI commit and export byte-exact', async (name, cs) => {
    const image = `cs-${name.toLowerCase()}`;
    const desktop = `d-${name.toLowerCase()}`;
    const disk = f(`${desktop}.img`);

    // create and publish
    const c = await cli(['image', 'create', image, '--from', f('base.img'), '--chunk-size', name, '--json'], admin);
    expect(c.code, c.stderr).toBe(0);
    expect(c.json).toMatchObject({ version: 1, parent: null });
    expect(await api('GET', `/api/v1/images/${image}`)).toMatchObject({ virtualSize: SIZE, chunkSize: cs });
    const p = await cli(['image', 'publish', image, '--from', f('v2.img'), '--json'], admin);
    expect(p.code, p.stderr).toBe(0);
    expect(p.json).toMatchObject({ version: 2, parent: 1 });

    // agent sync: a blank disk reaches the head byte for byte
    await api('POST', '/api/v1/desktops', { name: desktop, image });
    const { token } = await api('POST', `/api/v1/desktops/${desktop}/tokens`, {});
    const agent = (args: string[]) => cli(['agent', ...args, '--json'], { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: token });
    execFileSync('truncate', ['-s', String(SIZE + 4 * MiB), disk]);
    const s = await agent(['sync', '--disk', disk, '--desktop', desktop]);
    expect(s.code, s.stderr).toBe(0);
    expect(s.json).toMatchObject({ from: null, to: 2 });
    expect(imageSha(disk)).toBe(sha256(f('v2.img')));

    // agent commit: a whole formerly-zero chunk of incompressible data (one whole-chunk patch
    // record), more in another zero chunk, and a few blocks against a non-zero base chunk
    expect((await agent(['handoff', '--disk', disk])).code).toBe(0);
    const r = prng(cs);
    patch(disk, 8 * MiB, r(cs));
    patch(disk, 10 * MiB + 777, r(5000));
    patch(disk, 4 * MiB + 4096 * 5, r(8192));
    const k = await agent(['commit', '--disk', disk]);
    expect(k.code, k.stderr).toBe(0);
    expect(k.json).toMatchObject({ committed: true, parent: 2, conflict: null });
    const voi = k.json.version as number;
    expect((await cli(['image', 'export', `${image}@${voi}`, '--to', f(`${desktop}-voi.raw`)], admin)).code).toBe(0);
    expect(sha256(f(`${desktop}-voi.raw`))).toBe(imageSha(disk));

    // VDI commit: qemu-io writes through NBD (into a chunk still zero, over data, a zeroing write)
    const model = imageBytes(disk);
    const ses = await api('POST', '/api/v1/vdi/sessions', { desktop, autoCommit: false });
    expect(ses.session.base).toBe(voi);
    const out = await run('qemu-io', ['-f', 'raw',
      '-c', `write -P 0x5a ${12 * MiB + 1000} 70001`, '-c', `write -P 0xc3 ${4096 * 3 + 100} 5000`, '-c', `write -z ${8 * MiB + 4096} 8192`,
      '-c', 'flush', ses.url]);
    expect(out).not.toMatch(/error/i);
    model.fill(0x5a, 12 * MiB + 1000, 12 * MiB + 1000 + 70001);
    model.fill(0xc3, 4096 * 3 + 100, 4096 * 3 + 100 + 5000);
    model.fill(0, 8 * MiB + 4096, 8 * MiB + 4096 + 8192);
    writeFileSync(f(`${desktop}-model.raw`), model);
    const vc = await api('POST', `/api/v1/vdi/sessions/${ses.session.id}/commit`);
    expect(vc).toMatchObject({ state: 'committed', outcome: { kind: 'fast-forward', ref: `desktops/${desktop}` } });
    const vdiVersion = vc.outcome.version as number;
    expect(vdiVersion).toBeGreaterThan(voi);

    // export of the VDI version, and the VOI disk syncs to it (a delta with whole-chunk entries)
    expect((await cli(['image', 'export', `${image}@${vdiVersion}`, '--to', f(`${desktop}-vdi.raw`)], admin)).code).toBe(0);
    expect(sha256(f(`${desktop}-vdi.raw`))).toBe(sha256(f(`${desktop}-model.raw`)));
    const s2 = await agent(['sync', '--disk', disk, '--desktop', desktop]);
    expect(s2.code, s2.stderr).toBe(0);
    expect(s2.json).toMatchObject({ from: voi, to: vdiVersion });
    expect(imageSha(disk)).toBe(sha256(f(`${desktop}-model.raw`)));
  }, 240_000); // up to 5 sizes run at once on 2 shared cores: far more than one test's usual minute
});
