#!/usr/bin/env node
// The boot-storm load generator (issue 12; bench/storm.sh runs it): K endpoints at once, each playing
// the real agent's request sequence against a deskfuse server, then the same request list against
// nginx serving the same bytes (recorded from the server first), in the same run. One process, many
// keep-alive connections, no disks: bodies are counted and dropped.
//
// Each endpoint boots as a real one in a classroom at 8:00: its own MAC, enrolled on one restore-mode
// desktop (any number of endpoints may follow one; they take no lease and never commit back):
//   the iPXE script for its MAC (the server notes the boot and issues a one-time boot token), the
//   kernel and initramfs at the URLs the script names, the boot session (the token and the disk
//   secret's proof traded for a desktop token), then with that token: desktop, image, versions,
//   provision: the version's chunk index and every batch fetch of its chunks (16 MiB of raw chunk per
//              batch, its ids raw, two in flight, as src/agent/fetcher.ts)
//   update:    the new version's layer and its delta
//   and the agent's boot events (synced, local; `syncing` progress while a provisioning's batches run:
//   after 2 s, then at most every 2 s when the percentage moved, as initramfs/agent/main.ts). Before each K the admin orders a reprovision of the
//   endpoints (provision) or records their disks at the old version (update), as an unmeasured setup.
// nginx gets the same list as GETs of the bodies one recorded endpoint was answered.
//
// env: SERVER URL, TOKEN (admin), IMAGE, DESKTOP (restore mode, following ref REF), REF, FROM (version provisioned), TO (version updated to),
//      SERVER_PID, NGINX URL, NGINX_ROOT (folder nginx serves: the recorded bodies go there),
//      NGINX_PIDS (master and workers, comma-separated), KS (e.g. "50 200 500"), PHASES;
//      optional VARNISH_URL, VARNISH_PIDS, VARNISH_N (its -n folder): the update phase a third time
//      through Varnish (deploy/varnish/deskfuse.vcl) in front of the same server, its cache emptied
//      (ban) before each K, reporting the bytes the origin sent with and without the cache;
//      optional PERF_DIR: `perf record` of the server during each measured deskfuse phase (PHASE-K.data).
// Prints one JSON line per (phase, K, target) on stdout.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { idsPerFetch } from '../dist/src/agent/fetcher.js';
import { encodeIdList, ID_LIST_TYPE } from '../dist/src/chunk/id.js';
import { newEndpointSecret, proveEndpoint } from '../dist/src/endpoint/proof.js';
import { ChunkIndex } from '../dist/src/image/chunk-index.js';

const env = process.env;
const need = (k) => env[k] ?? (console.error(`storm: set ${k}`), process.exit(2));
const SERVER = need('SERVER');
const TOKEN = need('TOKEN');
const IMAGE = need('IMAGE');
const DESKTOP = need('DESKTOP');
const REF = env.REF ?? 'base';
const FROM = Number(need('FROM'));
const TO = Number(need('TO'));
const NGINX = need('NGINX');
const ROOT = need('NGINX_ROOT');
const VARNISH = env.VARNISH_URL || undefined;
const KS = (env.KS ?? '50').split(/[ ,]+/).filter(Boolean).map(Number);
const PHASES = (env.PHASES ?? 'provision update').split(/[ ,]+/).filter(Boolean);
const CLK = 100; // USER_HZ

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/**
 * One request; the body is counted (or kept when `keep`). As the agent: the admission ticket a server
 * gives (`me.ticket`) goes with every later request, and 503 DF_ERR_BUSY waits Retry-After (±25 %).
 */
function request(base, { method = 'GET', path: p, body, keep = false, token = TOKEN }, stats, me = {}) {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const headers = token ? { authorization: `Bearer ${token}` } : {};
      if (body) headers['content-type'] = Buffer.isBuffer(body) ? ID_LIST_TYPE : 'application/json';
      const sent = me.ticket;
      if (sent) headers['x-deskfuse-ticket'] = sent;
      // as src/api/client.ts: of two tickets given at once, keep the first heard of
      const adopt = (t) => { if (sent !== undefined || me.ticket === undefined) me.ticket = t; };
      const req = http.request(p.startsWith('http') ? p : `${base}${p}`, { method, agent, headers }, (res) => {
        if (res.headers['x-deskfuse-ticket']) adopt(res.headers['x-deskfuse-ticket']);
        const parts = [];
        let n = 0;
        res.on('data', (d) => { n += d.length; if (keep || res.statusCode >= 400) parts.push(d); });
        res.on('end', () => {
          stats.bytes += n;
          if (res.statusCode === 503) {
            let b = {};
            try { b = JSON.parse(Buffer.concat(parts).toString()); } catch {}
            if (b.code === 'DF_ERR_BUSY') {
              stats.busy++;
              adopt(b.ticket);
              const wait = Number(res.headers['retry-after'] ?? 5) * 1000 * (0.75 + Math.random() * 0.5);
              setTimeout(attempt, wait);
              return;
            }
          }
          if (res.statusCode >= 400) return reject(new Error(`${method} ${p}: HTTP ${res.statusCode} ${Buffer.concat(parts).toString().slice(0, 200)}`));
          resolve(keep ? Buffer.concat(parts) : n);
        });
        res.on('error', reject);
      });
      // as the agent (src/api/client.ts): a request cut before any answer (a keep-alive connection the
      // other side closed as it was reused: Varnish's timeout_idle is 5 s) is sent again, twice at most
      let answered = false;
      req.on('response', () => { answered = true; });
      req.on('error', (err) => (tries++ < 2 && !answered ? (stats.resent = (stats.resent ?? 0) + 1, attempt()) : reject(err)));
      req.end(body ? (Buffer.isBuffer(body) ? body : JSON.stringify(body)) : undefined);
    };
    let tries = 0;
    attempt();
  });
}

// ---- set-up: the endpoints, and the bodies one endpoint is answered (nginx's files) ----
const admin = (method, p, body) => request(SERVER, { method, path: p, body, keep: true }, { bytes: 0, busy: 0 }).then((b) => (b.length ? JSON.parse(b) : null));
const KMAX = Math.max(...KS);
const macOf = (i) => `52:54:00:${[i >> 16, (i >> 8) & 255, i & 255].map((x) => x.toString(16).padStart(2, '0')).join(':')}`;
const RECORDER = KMAX; // one more endpoint, whose answers become nginx's files
const listed = new Set((await admin('GET', '/api/v1/endpoints')).endpoints.flatMap((e) => e.macs));
for (let i = 0; i <= KMAX; i++) if (!listed.has(macOf(i))) await admin('POST', '/api/v1/endpoints', { mac: macOf(i), desktop: DESKTOP });
const secrets = new Map(); // mac → { secret, bound }: the disk's secret, as the agent keeps it in the state area
let refAt = (await admin('GET', `/api/v1/images/${IMAGE}/refs/${REF}`)).version;
/** Unmeasured: the desktop's line at the phase's version; endpoints [from, to) reprovisioned (provision) or at FROM (update). */
async function prepare(phase, from, to) {
  const want = phase === 'provision' ? FROM : TO;
  if (refAt !== want) await admin('PUT', `/api/v1/images/${IMAGE}/refs/${REF}`, { version: want, expect: refAt, reason: 'storm bench' });
  refAt = want;
  for (let i = from; i < to; i++) {
    const mac = macOf(i);
    if (phase === 'provision') {
      await admin('POST', `/api/v1/endpoints/${mac}/reprovision`);
      secrets.delete(mac); // a blank disk: the agent offers a new secret
    } else {
      await admin('POST', '/boot/events', { mac, phase: 'synced', detail: { version: FROM } });
    }
  }
}

const index = ChunkIndex.decode(await request(SERVER, { path: `/api/v1/images/${IMAGE}/versions/${FROM}/index`, keep: true }, { bytes: 0, busy: 0 }));
const ids = [...index.distinctIds()];
const per = idsPerFetch(index.geometry.chunkSize);
const batches = [];
for (let k = 0; k < ids.length; k += per) batches.push({ method: 'POST', path: '/api/v1/chunks/fetch', body: encodeIdList(ids.slice(k, k + per)), file: `fetch/${batches.length}.pack` });

/**
 * One endpoint's boot against a deskfuse server (directly or through Varnish): each request as the
 * agent makes it, with the answers of the ones before. `record` (set-up) keeps every body as nginx's file.
 */
async function boot(base, phase, i, stats, record) {
  const mac = macOf(i);
  const me = {};
  const get = async (r, token) => {
    const body = await request(base, { ...r, token, keep: Boolean(record) || r.keep }, stats, me);
    if (record) {
      const out = path.join(ROOT, r.file);
      mkdirSync(path.dirname(out), { recursive: true });
      writeFileSync(out, body, { mode: 0o644 });
      record.push({ path: `/${r.file}` });
    }
    return body;
  };
  const q = `mac=${mac}&platform=pcbios&buildarch=i386`;
  const script = (await get({ path: `/boot/ipxe?${q}`, file: 'boot/script.ipxe', keep: true }, null)).toString();
  const bootToken = /deskfuse\.token=(\S+)/.exec(script)?.[1];
  if (!bootToken) throw new Error(`${mac}: the script is not an agent boot: ${script.slice(0, 300)}`);
  await get({ path: /^kernel --name \S+ (\S+)/m.exec(script)[1], file: 'boot/vmlinuz' }, null);
  await get({ path: /^initrd --name \S+ (\S+)/m.exec(script)[1], file: 'boot/initrd.img' }, null);
  const known = secrets.get(mac);
  const disk = known ?? { secret: newEndpointSecret(), bound: false };
  const proof = proveEndpoint(disk.secret, mac, bootToken);
  const session = JSON.parse(await get({ method: 'POST', path: '/boot/session', body: { token: bootToken, mac, platform: 'pcbios', ...(disk.bound ? { proof } : { offer: proof }) }, file: 'api/session.json', keep: true }, null));
  const t = session.token;
  const version = phase === 'provision' ? FROM : TO;
  await get({ path: `/api/v1/desktops/${DESKTOP}`, file: 'api/desktop.json' }, t);
  await get({ path: `/api/v1/images/${IMAGE}`, file: 'api/image.json' }, t);
  // as src/agent/signed.ts: the server's signed word on the version to reach, before anything is written
  await get({ path: `/api/v1/desktops/${DESKTOP}/signed-head`, file: `api/signed-head-${phase}.json` }, t);
  await get({ path: `/api/v1/images/${IMAGE}/versions?ref=${version}&limit=17`, file: `api/versions-${version}.json` }, t);
  if (phase === 'provision') {
    await get({ path: `/api/v1/images/${IMAGE}/versions/${FROM}/index`, file: 'api/index.bin' }, t);
    let next = 0;
    let done = 0;
    // as initramfs/agent/main.ts: a `syncing` event once 2 s have passed and the percentage moved, one at a time
    let reported = -1;
    let lastAt = Date.now();
    let events = Promise.resolve();
    const progress = () => {
      const percent = Math.floor((done * 100) / batches.length);
      if (done >= batches.length || percent === reported || Date.now() - lastAt < 2000) return;
      [reported, lastAt] = [percent, Date.now()];
      events = events.then(() => get({ method: 'POST', path: '/boot/events', body: { mac, phase: 'syncing', detail: { done, total: batches.length, percent } }, file: `api/event-syncing-${percent}.json` }, t));
    };
    const fetchOne = async () => {
      await get(batches[next++], t);
      done++;
      progress();
    };
    // as src/api/client.ts: the first heavy request goes alone until the server gave a ticket
    if (!me.ticket && batches.length) await fetchOne();
    await Promise.all([0, 1].map(async () => {
      while (next < batches.length) await fetchOne();
    }));
    await events;
  } else {
    await get({ path: `/api/v1/images/${IMAGE}/versions/${TO}/layer`, file: 'api/layer.bin' }, t);
    await get({ path: `/api/v1/images/${IMAGE}/versions/${TO}/delta`, file: 'api/delta.bin' }, t);
  }
  await get({ method: 'POST', path: '/boot/events', body: { mac, phase: 'synced', detail: { version, seconds: 1 } }, file: 'api/event-synced.json' }, t);
  await get({ method: 'POST', path: '/boot/events', body: { mac, phase: 'local', detail: { via: 'reboot' } }, file: 'api/event-local.json' }, t);
  disk.bound = true; // the synced event bound an offered secret
  secrets.set(mac, disk);
}

const nginxLists = {};
for (const phase of PHASES) {
  await prepare(phase, RECORDER, RECORDER + 1);
  nginxLists[phase] = [];
  await boot(SERVER, phase, RECORDER, { bytes: 0, busy: 0 }, nginxLists[phase]);
}

// ---- one endpoint against nginx: the recorded list in order, batch fetches two in flight ----
async function endpoint(list, stats) {
  const serial = list.filter((r) => !r.path.startsWith('/fetch/'));
  const packs = list.filter((r) => r.path.startsWith('/fetch/'));
  const upTo = serial.findIndex((r) => r.path === '/api/index.bin') + 1 || serial.length - 2;
  for (const r of serial.slice(0, upTo)) await request(NGINX, r, stats);
  let next = 0;
  await Promise.all([0, 1].map(async () => {
    while (next < packs.length) await request(NGINX, packs[next++], stats);
  }));
  for (const r of serial.slice(upTo)) await request(NGINX, r, stats);
}

/** utime + stime of the processes (all their threads), in clock ticks. */
const ticks = (pids) => pids.reduce((n, pid) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return n + Number(f[11]) + Number(f[12]);
}, 0);
/** utime + stime of each thread of `pid`, in clock ticks, by name: the main thread is `main`, the others go by their comm (df-sender, libuv-worker, V8 workers…). */
function threadTicks(pid) {
  const by = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = Number(tid) === pid ? 'main' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      by[name] = (by[name] ?? 0) + Number(f[11]) + Number(f[12]);
    } catch { /* the thread ended meanwhile */ }
  }
  return by;
}
/** Bytes the process wrote (write(2) and sendfile(2) of all its threads: sockets, and its few file writes). */
const wchar = (pid) => Number(/^wchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))[1]);
const rssMiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
const pct = (a, q) => a[Math.min(a.length - 1, Math.floor(q * a.length))];
async function metrics() {
  const t = (await request(SERVER, { path: '/metrics', keep: true }, { bytes: 0, busy: 0 })).toString();
  const q = (k) => Number(new RegExp(`^deskfuse_event_loop_delay_seconds\\{quantile="${k}"\\} (\\S+)$`, 'm').exec(t)?.[1] ?? NaN) * 1000;
  return { p99: q('0.99'), max: q('max') };
}

for (const phase of PHASES) {
  for (const K of KS) {
    for (const target of ['deskfuse', 'nginx', ...(VARNISH && phase === 'update' ? ['varnish'] : [])]) {
      const server = Number(need('SERVER_PID'));
      const pids = target === 'deskfuse' ? [server] : need(target === 'nginx' ? 'NGINX_PIDS' : 'VARNISH_PIDS').split(',').map(Number);
      if (target === 'deskfuse') await metrics(); // resets the server's delay histogram
      // Each K starts from an empty site cache: what the origin sends is what K endpoints cost it.
      if (target === 'varnish') execFileSync('varnishadm', ['-n', need('VARNISH_N'), 'ban', 'req.url', '~', '.']);
      if (target !== 'nginx') await prepare(phase, 0, K);
      const w0 = wchar(server);
      const stats = { bytes: 0, busy: 0 };
      const done = [];
      let failures = 0;
      let firstError;
      let peak = 0;
      const sampler = setInterval(() => { peak = Math.max(peak, ...pids.map(rssMiB)); }, 100);
      const self = monitorEventLoopDelay({ resolution: 20 });
      self.enable();
      // PERF_DIR: `perf record` of the server over its measured phase (run it with SERVER_NODE_ARGS=--perf-basic-prof for JS names)
      const perf = env.PERF_DIR && target === 'deskfuse'
        ? spawn('perf', ['record', '-q', '-F', '499', '-e', 'cpu-clock', '-g', '-p', String(server), '-o', path.join(env.PERF_DIR, `${phase}-${K}.data`)], { stdio: 'inherit' })
        : undefined;
      if (perf) await new Promise((r) => setTimeout(r, 500));
      const c0 = ticks(pids);
      const th0 = target === 'deskfuse' ? threadTicks(server) : {};
      const me0 = process.cpuUsage();
      const t0 = performance.now();
      await Promise.all(Array.from({ length: K }, async (_, i) => {
        try {
          if (target === 'nginx') await endpoint(nginxLists[phase], stats);
          else await boot(target === 'varnish' ? VARNISH : SERVER, phase, i, stats);
          done.push((performance.now() - t0) / 1000);
        } catch (err) {
          failures++;
          firstError ??= err.message;
        }
      }));
      const wall = (performance.now() - t0) / 1000;
      clearInterval(sampler);
      self.disable();
      const cpu = (ticks(pids) - c0) / CLK;
      // Where the server's CPU went: per thread (a thread that ended meanwhile is not counted)
      const th1 = target === 'deskfuse' ? threadTicks(server) : {};
      if (perf) await new Promise((r) => { perf.once('exit', r); perf.kill('SIGINT'); });
      const threads = Object.fromEntries(Object.entries(th1).map(([k, v]) => [k, +((v - (th0[k] ?? 0)) / CLK).toFixed(2)]).filter(([, v]) => v > 0));
      const originMiB = target === 'nginx' ? null : +((wchar(server) - w0) / 2 ** 20).toFixed(1);
      const me = process.cpuUsage(me0);
      done.sort((a, b) => a - b);
      const delay = target === 'deskfuse' ? await metrics() : { p99: NaN, max: NaN };
      console.log(JSON.stringify({
        phase, K, target, failures, firstError, wall: +wall.toFixed(2), cpu: +cpu.toFixed(2), cpuPerClient: +(cpu / K).toFixed(4),
        p50: +(pct(done, 0.5) ?? NaN).toFixed(2), p99: +(pct(done, 0.99) ?? NaN).toFixed(2), max: +(done.at(-1) ?? NaN).toFixed(2),
        rssPeakMiB: Math.round(peak), originMiB, bytesPerClient: Math.round(stats.bytes / K), busyWaits: stats.busy,
        loopDelayP99ms: +delay.p99.toFixed(1), loopDelayMaxMs: +delay.max.toFixed(1), generatorCpu: +((me.user + me.system) / 1e6).toFixed(2),
        ...(target === 'deskfuse' ? { threads } : {}),
      }));
    }
  }
}
agent.destroy();
