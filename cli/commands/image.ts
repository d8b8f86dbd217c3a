import os from 'node:os';
import path from 'node:path';
import { checkImageName, parseImageRev } from '../../src/image/names.js';
import type { Image, ImageBoot, ImageDeleted, ImageList, ImageShow, PolicyBody, PolicyView, PruneReport, VersionList } from '../../src/api/schemas.js';
import { fmtBytes } from '../../src/progress.js';
import { exportVersion } from '../../src/transfer/export.js';
import { publishDisk } from '../../src/transfer/publish.js';
import { dfError } from '../../src/errors.js';
import { clientFrom, need, parse, parseSize, type Io } from '../args.js';
import { emit, table } from '../output.js';

const HELP = `deskfuse image create NAME --from FILE [--chunk-size N] [-m MSG] [BOOT]
deskfuse image publish NAME --from FILE [--ref main] [--parent VERSION] [-m MSG] [BOOT]
deskfuse image boot NAME --boot-partition N --boot-kernel PATH [--boot-initrd PATH] --boot-cmdline TEXT
  BOOT: the kernel the image's OS boots, for endpoints that hand off by kexec:
        --boot-partition N --boot-kernel /vmlinuz [--boot-initrd /initrd.img] --boot-cmdline "root=… quiet"
deskfuse image list | show NAME | log NAME[@REF] [--limit N]
deskfuse image export NAME[@REF|@VERSION] --to FILE|DIR [--format raw|qcow2] [--force]
      DIR: an existing directory gets NAME-vN.img (or .qcow2); an existing FILE is replaced only with
      --force; an interrupted export resumes from FILE.part on the next run
deskfuse image policy NAME [--keep-last N] [--keep-days D] [--conflict-days C]
      retention: keep the last N versions of each ref's line, every version younger than D days, a
      conflict's version C days; "default" returns a value to the server's (retention.* in its config)
deskfuse image prune NAME [--dry-run] [--verbose]
      drop the versions outside the policy (the ref log keeps them); versions a ref, desktop, lease,
      VDI session or endpoint's disk holds always stay; --verbose says why each kept one is kept
deskfuse image delete NAME [--force]
      its refs, versions and policy (the ref log stays); refused while desktops use it, unless --force
`;


export async function imageCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parse(rest, {
    from: { type: 'string' },
    'chunk-size': { type: 'string' },
    ref: { type: 'string', default: 'main' },
    parent: { type: 'string' },
    message: { type: 'string', short: 'm', default: '' },
    to: { type: 'string' },
    format: { type: 'string', default: 'raw' },
    limit: { type: 'string', default: '50' },
    'boot-partition': { type: 'string' },
    'boot-kernel': { type: 'string' },
    'boot-initrd': { type: 'string' },
    'boot-cmdline': { type: 'string' },
    'keep-last': { type: 'string' },
    'keep-days': { type: 'string' },
    'conflict-days': { type: 'string' },
    'dry-run': { type: 'boolean', default: false },
    verbose: { type: 'boolean', short: 'v', default: false },
    force: { type: 'boolean', default: false },
  });
  if (values.help || !sub || sub === '--help' || sub === '-h' || sub === 'help') {
    io.out.write(HELP);
    return sub ? 0 : 2;
  }
  const client = clientFrom(values, io.env);
  const json = values.json;
  const tty = !json && Boolean(io.err.isTTY);

  const boot = (): ImageBoot | undefined => {
    const given = ['boot-partition', 'boot-kernel', 'boot-initrd', 'boot-cmdline'].filter((k) => values[k as 'boot-kernel'] !== undefined);
    if (given.length === 0) return undefined;
    const kernel = need(values['boot-kernel'], '--boot-kernel PATH (with the other --boot-* options)');
    if (!kernel.startsWith('/')) throw dfError('DF_ERR_USAGE', `--boot-kernel: expected an absolute path on the partition, got ${JSON.stringify(kernel)}`, { option: '--boot-kernel' });
    if (values['boot-initrd'] !== undefined && !values['boot-initrd'].startsWith('/')) throw dfError('DF_ERR_USAGE', '--boot-initrd: expected an absolute path on the partition', { option: '--boot-initrd' });
    return {
      partition: positiveInt(need(values['boot-partition'], '--boot-partition N'), '--boot-partition'), kernel,
      ...(values['boot-initrd'] ? { initrd: values['boot-initrd'] } : {}), cmdline: need(values['boot-cmdline'], '--boot-cmdline TEXT'),
    };
  };

  switch (sub) {
    case 'boot': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const b = need(boot(), '--boot-partition, --boot-kernel and --boot-cmdline');
      const r = (await client.json<Image>('PUT', `/api/v1/images/${name}/boot`, { body: b })).body;
      emit(io, json, r, () => `${name}: kexec hand-off boots partition ${b.partition}: ${b.kernel}${b.initrd ? ` + ${b.initrd}` : ''} "${b.cmdline}"\n`);
      return 0;
    }
    case 'create':
    case 'publish': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const file = need(values.from, '--from FILE');
      const bootSpec = boot(); // checked before the (long) publish
      const r = await publishDisk({
        client, image: name, file, create: sub === 'create', ref: values.ref, message: values.message,
        ...(values.parent ? { parent: positiveInt(values.parent, '--parent') } : {}),
        ...(values['chunk-size'] ? { chunkSize: parseSize(values['chunk-size'], '--chunk-size') } : {}),
        tmpDir: path.join(os.tmpdir()), progress: tty,
      });
      if (bootSpec) await client.json('PUT', `/api/v1/images/${name}/boot`, { body: bootSpec });
      emit(io, json, r, () =>
        r.conflict
          ? `version ${r.version} of ${name} is kept as ${r.conflict.conflictRef}: ${r.ref} moved to ${r.conflict.head} meanwhile (parent was ${r.parent})\n`
          : `${name}@${r.ref} is now version ${r.version} (parent ${r.parent ?? 'none'}): ${r.chunks} chunks, ${r.chunksChanged} changed, ${r.chunksNew} new, ${fmtBytes(r.bytesUploaded)} uploaded in ${r.seconds.toFixed(1)} s\n`);
      return r.conflict ? 3 : 0;
    }
    case 'list': {
      const r = (await client.json<ImageList>('GET', '/api/v1/images')).body;
      emit(io, json, r, () => table([['IMAGE', 'SIZE', 'CHUNK', 'VERSIONS', 'REFS'], ...r.images.map((i) => [
        i.name, fmtBytes(i.virtualSize), fmtBytes(i.chunkSize), String(i.versions), i.refs.map((x) => `${x.name}=${x.version}`).join(' '),
      ])]));
      return 0;
    }
    case 'show': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const r = (await client.json<ImageShow>('GET', `/api/v1/images/${name}`)).body;
      // The retention policy is an admin's to read: a desktop token's show leaves it out.
      const policy = await client.json<PolicyView>('GET', `/api/v1/images/${name}/policy`).then((p) => p.body, () => undefined);
      emit(io, json, { ...r, ...(policy ? { policy } : {}) }, () => `image ${r.name}: ${fmtBytes(r.virtualSize)} (${r.virtualSize} bytes), ${fmtBytes(r.chunkSize)} chunks, ${r.hashAlg}, ${r.versions} versions, created ${r.createdAt}\n` +
        (policy ? `retention: ${policyText(policy)}\n` : '') +
        table([['REF', 'VERSION', 'UPDATED'], ...r.refs.map((x) => [x.name, String(x.version), x.updatedAt])]));
      return 0;
    }
    case 'policy': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const body: PolicyBody = {};
      const opt = (flag: 'keep-last' | 'keep-days' | 'conflict-days', key: keyof PolicyBody, min: number) => {
        const raw = values[flag];
        if (raw === undefined) return;
        if (raw === 'default') { body[key] = null; return; }
        if (!/^\d+$/.test(raw) || Number(raw) < min) throw dfError('DF_ERR_USAGE', `--${flag}: expected a whole number of at least ${min}, or "default", got ${JSON.stringify(raw)}`, { option: `--${flag}` });
        body[key] = Number(raw);
      };
      opt('keep-last', 'keepLast', 1);
      opt('keep-days', 'keepDays', 0);
      opt('conflict-days', 'conflictDays', 0);
      const r = Object.keys(body).length
        ? (await client.json<PolicyView>('PUT', `/api/v1/images/${name}/policy`, { body })).body
        : (await client.json<PolicyView>('GET', `/api/v1/images/${name}/policy`)).body;
      emit(io, json, r, () => `${name} retention: ${policyText(r)}\n`);
      return 0;
    }
    case 'prune': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const dry = values['dry-run'];
      const r = (await client.json<PruneReport>('POST', `/api/v1/images/${name}/prune`, { body: { dryRun: dry }, idempotent: dry })).body;
      emit(io, json, r, () => pruneText(r, values.verbose));
      return 0;
    }
    case 'delete': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const r = (await client.json<ImageDeleted>('DELETE', `/api/v1/images/${name}${values.force ? '?force=true' : ''}`)).body;
      emit(io, json, r, () => `image ${name} deleted: ${r.versions} versions${r.desktops.length ? `, desktops ${r.desktops.join(', ')}` : ''}; ${fmtBytes(r.bytes)} of layers, indexes and deltas freed; ${r.chunks}\n`);
      return 0;
    }
    case 'log': {
      const { image, rev } = parseImageRev(need(positionals[0], 'NAME[@REF]'));
      const q = /^\d+$/.test(rev) ? '' : `&ref=${encodeURIComponent(rev)}`;
      const r = (await client.json<VersionList>('GET', `/api/v1/images/${image}/versions?limit=${Number(values.limit)}${q}`)).body;
      emit(io, json, r, () => table([['VERSION', 'PARENT', 'KIND', 'AUTHOR', 'CHANGED', 'CHUNKS', 'TIME', 'MESSAGE'], ...r.versions.map((v) => [
        String(v.version), String(v.parent ?? '-'), v.kind, v.author, String(v.chunksChanged), String(v.chunksTotal), v.createdAt, v.message,
      ])]));
      return 0;
    }
    case 'export': {
      const { image, rev } = parseImageRev(need(positionals[0], 'NAME[@REF|@VERSION]'));
      const to = need(values.to, '--to FILE');
      if (values.format !== 'raw' && values.format !== 'qcow2') throw dfError('DF_ERR_USAGE', `--format: expected raw or qcow2, got ${JSON.stringify(values.format)}`);
      const r = await exportVersion({
        client, image, rev, to, format: values.format, progress: tty, force: values.force,
        onResume: (part, kept, total) => { if (!json) io.err.write(`resuming the export in ${part}: ${kept} of ${total} chunks already there\n`); },
      });
      emit(io, json, r, () => `exported ${image}@${rev} (version ${r.version}) to ${r.to} as ${r.format}: ${r.chunks} chunks` +
        `${r.chunksResumed ? ` (${r.chunksResumed} already in the .part of an earlier run)` : ''}, ${fmtBytes(r.bytesFetched)} fetched in ${r.seconds.toFixed(1)} s\n`);
      return 0;
    }
    default:
      throw dfError('DF_ERR_USAGE', `unknown image command ${JSON.stringify(sub)}\n${HELP}`);
  }
}

function policyText(p: PolicyView): string {
  const v = (k: keyof PolicyView['effective']) => `${p.effective[k]}${p.override[k] === null ? ' (server default)' : ''}`;
  return `keep the last ${v('keepLast')} versions of each ref's line, versions younger than ${v('keepDays')} days, conflicts ${v('conflictDays')} days`;
}

function pruneText(r: PruneReport, verbose: boolean): string {
  const verb = r.dryRun ? 'would drop' : 'dropped';
  const lines = [
    `${r.image}: ${verb} ${r.dropped.length} version${r.dropped.length === 1 ? '' : 's'}${r.dropped.length ? `: ${r.dropped.map((v) => v.version).join(' ')}` : ''}; ${r.kept.length} kept`,
    `${r.dryRun ? 'would free' : 'freed'} ${fmtBytes(r.bytes.total)} (layers ${fmtBytes(r.bytes.layers)}, indexes ${fmtBytes(r.bytes.indexes)}, deltas ${fmtBytes(r.bytes.deltas)}); ${r.chunks}`,
  ];
  const deleted = r.conflicts.filter((c) => c.deleted);
  if (deleted.length) lines.push(`resolved conflict refs ${r.dryRun ? 'to delete' : 'deleted'}: ${deleted.map((c) => c.ref).join(', ')}`);
  const open = r.conflicts.filter((c) => !c.resolved);
  if (open.length) lines.push(`unresolved conflicts (kept until resolved: reset or promote to one, or deskfuse ref delete ${r.image} REF --force):`, ...open.map((c) => `  ${c.ref} at version ${c.version} since ${c.updatedAt}`));
  let out = `${lines.join('\n')}\n`;
  if (verbose) out += table([['KEPT', 'WHY'], ...r.kept.map((k) => [String(k.version), k.why.join('; ')])]);
  return out;
}

function positiveInt(s: string, option: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < 1) throw dfError('DF_ERR_USAGE', `${option}: expected a version number, got ${JSON.stringify(s)}`, { option });
  return n;
}
