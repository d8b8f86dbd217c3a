import { copyFileSync, truncateSync, writeFileSync } from 'node:fs';
import { it } from 'vitest';
import { baseDisk, patch, prng, sha256 } from '../helpers/disk.js';
import { cli, startProcess, stopProcess, tempDir } from '../helpers/server.js';
import { startProxy } from '../helpers/proxy.js';

it('exp', async () => {
  const tmp = tempDir('df-exp-');
  const srv = await startProcess(`${tmp.dir}/data`);
  const env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
  const d = tmp.dir;
  baseDisk(`${d}/base.img`, 1);
  copyFileSync(`${d}/base.img`, `${d}/v2.img`);
  const r = prng(5);
  for (let i = 0; i < 200; i++) patch(`${d}/v2.img`, ((i * 7919) % 8192) * 4096, r(4096));
  await cli(['image', 'create', 'win', '--from', `${d}/base.img`, '--json'], env);
  await cli(['image', 'publish', 'win', '--from', `${d}/v2.img`, '--json'], env);
  await cli(['desktop', 'create', 'alice', '--image', 'win'], env);
  writeFileSync(`${d}/disk.img`, ''); truncateSync(`${d}/disk.img`, 36 * 1024 * 1024);
  console.log((await cli(['agent', 'sync', '--disk', `${d}/disk.img`, '--desktop', 'alice', '--token', srv.token, '--server', srv.url, '--json'])).stdout);
  copyFileSync(`${d}/base.img`, `${d}/alt.img`);
  for (let i = 0; i < 40; i++) patch(`${d}/alt.img`, i * 3 * 65536 + 8192, r(70000));
  await cli(['ref', 'set', 'win', 'alt', '1', '--expect', 'none'], env);
  console.log((await cli(['image', 'publish', 'win', '--from', `${d}/alt.img`, '--ref', 'alt', '--json'], env)).stdout);
  console.log((await cli(['desktop', 'reset', 'alice', '--to', 'alt'], env)).stdout);
  const proxy = await startProxy(srv.url);
  let cuts = 0;
  proxy.hooks.onResponse = (info, body) => {
    if ((info.url.includes('/delta') || info.url.includes('/chunks/fetch')) && cuts < 1) { cuts++; return { cut: body.length >> 1 }; }
    return undefined;
  };
  const s = await cli(['agent', 'sync', '--disk', `${d}/disk.img`, '--desktop', 'alice', '--token', srv.token, '--server', proxy.url, '--json'], { DESKFUSE_DEBUG: '1' });
  console.log(s.code, s.stdout, s.stderr, proxy.seen, sha256(`${d}/alt.img`));
  await proxy.close();
  await stopProcess(srv.proc);
  tmp.cleanup();
});
