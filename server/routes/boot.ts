import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  BootEvent, BootEventBody, BootSession, CommitRequestAnswer, type CommitRequestBody, IpxeQuery, KeepaliveAnswer, type KeepaliveBody, MacQuery, SessionBody,
} from '../../src/api/schemas.js';
import { scopeDesktop } from '../../src/desktop/desktops.js';
import { normalizeMac, type BootPhase } from '../../src/endpoint/model.js';
import { dfError } from '../../src/errors.js';
import { grubScript } from '../../src/grub/render.js';
import { bootScript, chainScript } from '../../src/ipxe/render.js';
import { BootStageHashes, keyOf, STAGE_HASH_HEX, type StageFile } from '../boot-stage.js';
import { HeldFiles } from '../../src/fs/held-files.js';
import { immutable } from '../conditional.js';
import type { AppContext } from '../context.js';
import { BODY_BOOT, BODY_BOOT_EVENTS } from '../limits.js';
import { canSendOnThread, sendFd, sendFile } from '../send-file.js';
import { httpsBase } from '../tls.js';

/**
 * The network boot flow, under /boot (no admin token: firmware cannot send one).
 *   GET  /boot/ipxe            iPXE script: who are you → what this boot does (src/endpoint/decide.ts)
 *   GET  /boot/vmlinuz         the boot stage's kernel      } streamed from the initramfs build
 *   GET  /boot/initrd.img      the boot stage's initramfs   } (no-cache: their bytes change with a rebuild)
 *   GET  /boot/stage/HASH/vmlinuz, /boot/stage/HASH/initrd.img   the same bytes under their content
 *                              hash (immutable: any HTTP cache keeps them; the iPXE script names these;
 *                              a HASH that is no longer current is 404 DF_ERR_BOOT_STAGE_CHANGED)
 *   POST /boot/session         one-time boot token + MAC + proof of the disk's secret → this boot's desktop token and orders
 *   POST /boot/events          the agent's progress (desktop token of the endpoint's desktop)
 *   POST /boot/commit-request  the desktop's OS at power-off: reboot into a commit? (heard only from
 *                              the endpoint's last-known address: src/endpoint/endpoints.ts)
 *   POST /boot/keepalive       the desktop's OS, every minute: renew the lease its boot left (same origin check)
 */
export const bootRoutes = (ctx: AppContext): FastifyPluginAsyncTypebox => async (app) => {
  const { endpoints, boot } = ctx;
  const scripts = ctx.metrics.counter('deskfuse_boot_scripts_total', 'iPXE scripts served by decision');
  const stage = new BootStageHashes(boot.dir);
  const base = (req: FastifyRequest) => boot.publicUrl ?? `${req.protocol}://${req.headers.host ?? `${req.hostname}`}`;
  // With TLS on, the boot stage's agent talks HTTPS (its calls carry tokens) to the host iPXE reached;
  // with tls.plainHttp "all" (a site cache in front, which speaks HTTP) it stays on the script's base.
  const agentBase = (_req: FastifyRequest, b: string): string | undefined =>
    ctx.tls && ctx.tls.plainHttp !== 'all' ? (b.startsWith('https:') ? b : httpsBase(ctx.tls, new URL(b).host)) : undefined;

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });

  app.get('/boot/ipxe', {
    config: { public: true, plainHttp: true }, schema: { querystring: IpxeQuery, tags: ['boot'], summary: 'iPXE boot script for this endpoint' },
  }, async (req, reply) => {
    reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store');
    const b = base(req);
    if (!req.query.mac) {
      scripts(1, { decision: 'chain' });
      return chainScript(boot.templates, b);
    }
    const mac = normalizeMac(req.query.mac);
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(req.query.mac)}`, { field: 'mac' });
    const q = req.query;
    const { e, d, token } = await decideAndRecord(ctx, { mac, ...pick(q, ['uuid', 'serial', 'platform', 'buildarch']), ip: req.ip });
    const self = `${b}/boot/ipxe?${new URLSearchParams({ mac, ...pick(q, ['uuid', 'serial', 'buildarch', 'platform']) }).toString()}`;
    scripts(1, { decision: d.kind === 'agent' ? d.action : d.kind });
    const paths = d.kind === 'agent' ? await stage.paths() : undefined;
    const ab = agentBase(req, b);
    const trust = d.kind === 'agent' ? await trustPath(q.platform === 'efi') : undefined;
    return bootScript(boot.templates, d, {
      ...(ab && ctx.tls ? { agentBase: ab, caFingerprint: ctx.tls.caFingerprint } : {}),
      base: b, mac, endpoint: e.name, self, kernelArgs: boot.kernelArgs, firmware: q.platform === 'efi' ? 'uefi' : 'bios',
      retrySeconds: boot.retrySeconds, ...(token ? { token } : {}), ...(paths ? { kernel: paths.vmlinuz, initrd: paths['initrd.img'], trust: trust! } : {}),
    });
  });

  const missing = (p: string) => dfError('DF_ERR_BOOT_FILES_MISSING', `${p} is missing: build the boot stage with \`npm run build:initramfs\``, { file: p });

  // Only endpoints we know leave an event (anyone can fetch these files).
  const noteFetch = async (req: FastifyRequest<{ Querystring: MacQuery }>, phase: BootPhase, bytes: number) => {
    const mac = req.query.mac ? normalizeMac(req.query.mac) : undefined;
    const known = mac && req.method === 'GET' ? await ctx.meta.endpoints.findByMac(mac) : undefined;
    if (known) await endpoints.record(phase, mac!, { bytes, ip: req.ip }, known);
  };

  // GET on plain TCP (the storm's case): from a descriptor held between requests, by the sender thread.
  const held = new HeldFiles();
  app.addHook('onClose', async () => held.close());
  const serveHeld = async (file: StageFile, phase: BootPhase, req: FastifyRequest<{ Querystring: MacQuery; Params: { hash?: string } }>, reply: FastifyReply) => {
    const p = path.join(boot.dir, file);
    let f = await held.acquire(p);
    if (!f) throw missing(p);
    try {
      let cur = await stage.current(file, f.key);
      if (cur?.key !== f.key) {
        // the path names another file now (a rebuild renamed in): serve that one
        held.forget(p, f.key);
        f.release();
        f = await held.acquire(p);
        if (!f) throw missing(p);
        cur = await stage.current(file, f.key);
      }
      const want = req.params.hash;
      // The hash must be of the bytes this descriptor reads (a rebuild that just renamed a new file in: changed).
      if (want !== undefined && (cur?.hash !== want || cur.key !== f.key)) throw dfError('DF_ERR_BOOT_STAGE_CHANGED', `${file} is now ${cur?.hash ?? 'missing'}, not ${want}: ask /boot/ipxe for the current boot script`, { file, hash: want, current: cur?.hash ?? null });
      await noteFetch(req, phase, f.size);
      if (want !== undefined && immutable(req, reply, `"${want}"`)) return reply;
      if (want === undefined) reply.header('cache-control', 'no-cache');
      reply.type('application/octet-stream');
      return await sendFd(reply, f.fd, f.size);
    } finally {
      f?.release();
    }
  };

  const serveFile = (file: StageFile, phase: BootPhase) => async (req: FastifyRequest<{ Querystring: MacQuery; Params: { hash?: string } }>, reply: FastifyReply) => {
    if (req.method === 'GET' && canSendOnThread(reply)) return serveHeld(file, phase, req, reply);
    const p = path.join(boot.dir, file);
    const fh = await fsp.open(p, 'r').catch(() => undefined);
    const st = await fh?.stat().catch(() => undefined);
    if (!fh || !st?.isFile()) {
      await fh?.close();
      throw missing(p);
    }
    try {
      const want = req.params.hash;
      if (want !== undefined) {
        // The hash must be of the bytes this descriptor reads (a rebuild that just renamed a new file in: changed).
        const cur = await stage.current(file, keyOf(st));
        if (cur?.hash !== want || cur.key !== keyOf(st)) throw dfError('DF_ERR_BOOT_STAGE_CHANGED', `${file} is now ${cur?.hash ?? 'missing'}, not ${want}: ask /boot/ipxe for the current boot script`, { file, hash: want, current: cur?.hash ?? null });
      }
      await noteFetch(req, phase, st.size);
      if (want !== undefined && immutable(req, reply, `"${want}"`)) {
        await fh.close();
        return reply;
      }
    } catch (err) {
      await fh.close();
      throw err;
    }
    if (req.params.hash === undefined) reply.header('cache-control', 'no-cache');
    reply.type('application/octet-stream');
    return sendFile(reply, fh, st.size); // HEAD: the headers alone
  };
  const StageParams = Type.Object({ hash: Type.String({ pattern: `^[0-9a-f]{${STAGE_HASH_HEX}}$` }) });
  for (const [file, phase] of [['vmlinuz', 'kernel'], ['initrd.img', 'initrd']] as const) {
    const what = phase === 'kernel' ? 'kernel' : 'initramfs';
    app.route({
      method: ['GET', 'HEAD'], url: `/boot/${file}`, config: { public: true, plainHttp: true },
      schema: { querystring: MacQuery, tags: ['boot'], summary: `The boot stage's ${what}` },
      handler: serveFile(file, phase),
    });
    app.route({
      method: ['GET', 'HEAD'], url: `/boot/stage/:hash/${file}`, config: { public: true, plainHttp: true },
      schema: { params: StageParams, querystring: MacQuery, tags: ['boot'], summary: `The boot stage's ${what} under its content hash (immutable)` },
      handler: serveFile(file, phase),
    });
  }

  // The trust initrd (src/sign/trust-initrd.ts): the server's version-signing keys as a cpio iPXE lays
  // over the boot stage; public like the stage files, and immutable under its content hash.
  // `pad` zero bytes go first. The kernel unpacks a cpio archive only at a 4-byte aligned offset of the
  // whole initrd (init/initramfs.c, unpack_to_rootfs), and skips zeros to reach one. iPXE's BIOS loader
  // aligns each initrd itself; the EFI stub reads the initrd= files back to back, so there this one
  // starts where initrd.img ends: its padding makes up initrd.img's size to a multiple of 4.
  const trustPath = async (efi: boolean): Promise<string> => {
    const hash = ctx.signing.key.trustInitrd().hash;
    const size = efi ? (await stage.current('initrd.img').catch(() => undefined))?.size ?? 0 : 0;
    const pad = (4 - (size % 4)) % 4;
    return `/boot/trust/${hash}/trust.cpio${pad ? `?pad=${pad}` : ''}`;
  };
  const sendTrust = async (req: FastifyRequest<{ Params: { hash?: string }; Querystring: { pad?: number } }>, reply: FastifyReply) => {
    const t = ctx.signing.key.trustInitrd();
    const want = req.params.hash;
    if (want !== undefined && want !== t.hash) throw dfError('DF_ERR_BOOT_STAGE_CHANGED', `trust.cpio is now ${t.hash}, not ${want}: ask /boot/ipxe for the current boot script`, { file: 'trust.cpio', hash: want, current: t.hash });
    if (want !== undefined && immutable(req, reply, `"${want}-${req.query.pad ?? 0}"`)) return reply;
    if (want === undefined) reply.header('cache-control', 'no-cache');
    reply.type('application/octet-stream');
    return req.query.pad ? Buffer.concat([Buffer.alloc(req.query.pad), t.bytes]) : t.bytes;
  };
  const TrustQuery = Type.Object({ pad: Type.Optional(Type.Integer({ minimum: 0, maximum: 3, description: 'zero bytes before the archive (aligns it after initrd.img under the EFI stub)' })) });
  app.route({
    method: ['GET', 'HEAD'], url: '/boot/trust.cpio', config: { public: true },
    schema: { querystring: TrustQuery, tags: ['boot'], summary: "The trust initrd: the server's version-signing keys as etc/deskfuse/trust.json in a cpio archive" },
    handler: sendTrust,
  });
  app.route({
    method: ['GET', 'HEAD'], url: '/boot/trust/:hash/trust.cpio', config: { public: true },
    schema: { params: StageParams, querystring: TrustQuery, tags: ['boot'], summary: 'The trust initrd under its content hash (immutable)' },
    handler: sendTrust,
  });

  app.post('/boot/session', {
    bodyLimit: BODY_BOOT, config: { public: true }, schema: { body: SessionBody, response: { 200: BootSession }, tags: ['boot'], summary: "Trade this boot's one-time token (bound to the MAC) and a proof of the disk's secret for its desktop token and orders" },
  }, async (req) => await endpoints.openSession({ ...req.body, ip: req.ip }));

  app.post('/boot/events', {
    bodyLimit: BODY_BOOT_EVENTS, config: { access: 'any' }, schema: { body: BootEventBody, response: { 201: BootEvent }, tags: ['boot'], summary: "The agent's progress (desktop token of the endpoint's desktop)" },
  }, async (req, reply) => {
    const e = await endpoints.get(req.body.mac);
    const scope = req.tokenScope ?? '';
    if (scope !== 'admin' && (e.desktop === null || scopeDesktop(scope) !== e.desktop)) {
      throw dfError('DF_ERR_FORBIDDEN', `a token of scope ${scope} may not report for endpoint ${e.name}`, { scope, endpoint: e.id });
    }
    await endpoints.noteAddress(e, req.ip);
    const ev = await endpoints.record(req.body.phase, req.body.mac, req.body.detail ?? {}, e);
    return reply.status(201).send(ev);
  });

  app.post<{ Body: CommitRequestBody | undefined; Querystring: MacQuery; Reply: CommitRequestAnswer }>('/boot/commit-request', {
    bodyLimit: BODY_BOOT, config: { public: true, plainHttp: true }, schema: { querystring: MacQuery, response: { 200: CommitRequestAnswer }, tags: ['boot'], summary: "The desktop OS at power-off: answers {action: 'commit-poweroff'} (reboot into a commit) or {action: 'none'}" },
  }, async (req) => {
    const mac = req.body?.mac ?? req.query.mac;
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', 'mac: required (form field, JSON field or query)', { field: 'mac' });
    return await endpoints.requestCommit(mac, { ip: req.ip });
  });
  app.post<{ Body: KeepaliveBody | undefined; Querystring: MacQuery; Reply: KeepaliveAnswer }>('/boot/keepalive', {
    bodyLimit: BODY_BOOT, config: { public: true, plainHttp: true }, schema: { querystring: MacQuery, response: { 200: KeepaliveAnswer }, tags: ['boot'], summary: "The desktop OS, while it runs: renew the desktop lease its endpoint's boot left (holder endpoint:NAME); answers {renewed, expiresAt}" },
  }, async (req) => {
    const mac = req.body?.mac ?? req.query.mac;
    if (!mac) throw dfError('DF_ERR_BAD_REQUEST', 'mac: required (form field, JSON field or query)', { field: 'mac' });
    const raw = req.body?.ttlSeconds;
    const ttl = raw === undefined ? undefined : Number(raw);
    if (ttl !== undefined && (!Number.isInteger(ttl) || ttl < 10 || ttl > 86400)) throw dfError('DF_ERR_BAD_REQUEST', `ttlSeconds: expected 10 to 86400, got ${JSON.stringify(raw)}`, { field: 'ttlSeconds' });
    return await endpoints.keepalive(mac, { ip: req.ip }, ttl);
  });
};

/**
 * One network boot's decision (src/endpoint/decide.ts), its one-time token and its `script` event:
 * shared by /boot/ipxe and the Secure Boot chain's GRUB config (grubConfigFor).
 */
async function decideAndRecord(ctx: AppContext, q: { mac: string; ip: string; platform?: string; uuid?: string; serial?: string; buildarch?: string; loader?: string }) {
  const { endpoints } = ctx;
  const { mac, loader, ...seen } = q;
  const e = await endpoints.seen({ mac, ...seen });
  const d = await endpoints.decide(e, q.platform);
  const token = d.kind === 'agent' ? await endpoints.issueBootToken(e, mac, d.action) : undefined;
  // A waiting endpoint asks again every few seconds: one event per wait, not one per question.
  const waiting = d.kind === 'pending' || d.kind === 'unassigned';
  const last = waiting ? (await endpoints.recentEvents(mac, 1))[0] : undefined;
  if (!(last?.phase === 'script' && last.detail.decision === d.kind)) {
    await endpoints.record('script', mac, { decision: d.kind, ...(d.kind === 'agent' ? { action: d.action, handoff: d.handoff } : {}), ...('local' in d ? { local: d.local } : {}), reason: d.reason, platform: q.platform ?? null, ip: q.ip, ...(loader ? { loader } : {}) }, e);
  }
  // The loader boots the disk itself (or leaves it to the firmware): from now on the OS may change it.
  if (d.kind === 'local' || d.kind === 'disabled') await endpoints.record('local', mac, { via: d.local }, e);
  return { e, d, token };
}

/**
 * The Secure Boot chain's per-endpoint GRUB config (src/grub/render.ts), asked for by TFTP
 * (server/services/netboot.ts): the same decision as /boot/ipxe, for a UEFI client.
 */
export async function grubConfigFor(ctx: AppContext, q: { mac: string; ip: string; base: string }): Promise<string> {
  const mac = normalizeMac(q.mac);
  if (!mac) throw dfError('DF_ERR_BAD_REQUEST', `mac: expected a MAC address, got ${JSON.stringify(q.mac)}`, { field: 'mac' });
  const { e, d, token } = await decideAndRecord(ctx, { mac, ip: q.ip, platform: 'efi', loader: 'grub' });
  const base = ctx.boot.publicUrl ?? q.base;
  // As for iPXE: with TLS on, the boot stage's agent talks HTTPS to the same host and pins our CA.
  const tls = ctx.tls && ctx.tls.plainHttp !== 'all' ? { agentBase: base.startsWith('https:') ? base : httpsBase(ctx.tls, new URL(base).host), caFingerprint: ctx.tls.caFingerprint } : {};
  return grubScript(d, { base, ...tls, mac, endpoint: e.name, kernelArgs: ctx.boot.kernelArgs, retrySeconds: ctx.boot.retrySeconds, ...(token ? { token } : {}) });
}

function pick<T extends Record<string, string | undefined>>(o: T, keys: readonly (keyof T & string)[]): Record<string, string> {
  const r: Record<string, string> = {};
  for (const k of keys) if (o[k]) r[k] = o[k] as string;
  return r;
}
