import os from 'node:os';
import path from 'node:path';
import { checkImageName, parseImageRev } from '../../src/image/names.js';
import type { Image, ImageBoot, ImageDeleted, ImageList, ImageShow, PolicyBody, PolicyView, PruneReport, VersionList } from '../../src/api/schemas.js';
import { fmtBytes } from '../../src/progress.js';
import { exportVersion } from '../../src/transfer/export.js';
import { verifyVersion } from '../../src/sign/verify-version.js';
import { publishDisk } from '../../src/transfer/publish.js';
import { dfError } from '../../src/errors.js';
import { clientFrom, need, parseCommand, parseSize, type Io } from '../args.js';
import { IMAGE } from '../spec.js';
import { emit, fmtTime, plural, refsCell, table } from '../output.js';

export async function imageCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(IMAGE, args, io);
  if (typeof p === 'number') return p;
  const { sub, values, positionals } = p;
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
        client, image: name, file, create: sub === 'create', ref: values.ref, message: values.message, allowEmpty: values['allow-empty'],
        ...(values.parent ? { parent: positiveInt(values.parent, '--parent') } : {}),
        ...(values['chunk-size'] ? { chunkSize: parseSize(values['chunk-size'], '--chunk-size') } : {}),
        tmpDir: path.join(os.tmpdir()), progress: tty,
      });
      if (bootSpec) await client.json('PUT', `/api/v1/images/${name}/boot`, { body: bootSpec });
      emit(io, json, r, () =>
        r.unchanged
          ? `${name}: nothing changed since version ${r.version}${r.head === r.version ? ` (${r.ref} is at ${r.version})` : `, the parent (${r.ref} is at ${r.head ?? 'nothing'})`}: `
            + `no version made (--allow-empty makes one)\n`
          : r.conflict
            ? `version ${r.version} of ${name} is kept as ${r.conflict.conflictRef}: ${r.ref} moved to ${r.conflict.head} meanwhile (parent was ${r.parent})\n`
            : `${name}@${r.ref} is now version ${r.version} (parent ${r.parent ?? 'none'}): ${plural(r.chunks, 'chunk')}, ${r.chunksChanged} changed, ${r.chunksNew} new, `
              + `${fmtBytes(r.bytesUploaded)} uploaded in ${r.seconds.toFixed(1)} s\n`);
      return r.conflict ? 3 : 0;
    }
    case 'list': {
      const r = (await client.json<ImageList>('GET', '/api/v1/images')).body;
      // REFS: the plain refs with their versions, then how many desktops' lines and conflicts (--json: every ref).
      emit(io, json, r, () => table([['IMAGE', 'SIZE', 'CHUNK', 'VERSIONS', 'REFS'], ...r.images.map((i) => [
        i.name, fmtBytes(i.virtualSize), fmtBytes(i.chunkSize), String(i.versions ?? '-'), refsCell(i.refs, { versions: true }),
      ])]));
      return 0;
    }
    case 'show': {
      const name = checkImageName(need(positionals[0], 'image NAME'));
      const r = (await client.json<ImageShow>('GET', `/api/v1/images/${name}`)).body;
      // The retention policy is an admin's to read: a desktop token's show leaves it out.
      const policy = await client.json<PolicyView>('GET', `/api/v1/images/${name}/policy`).then((p) => p.body, () => undefined);
      emit(io, json, { ...r, ...(policy ? { policy } : {}) }, () => `image ${r.name}: ${fmtBytes(r.virtualSize)} (${r.virtualSize} bytes), ${fmtBytes(r.chunkSize)} chunks, ${r.hashAlg}, ${r.versions !== undefined ? `${plural(r.versions, 'version')}, ` : ''}created ${fmtTime(r.createdAt)}\n` +
        (policy ? `retention: ${policyText(policy)}\n` : '') +
        table([['REF', 'VERSION', 'UPDATED'], ...r.refs.map((x) => [x.name, String(x.version), fmtTime(x.updatedAt)])]));
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
      emit(io, json, r, () => `image ${name} deleted: ${plural(r.versions, 'version')}${r.desktops.length ? `, desktops ${r.desktops.join(', ')}` : ''}; ${fmtBytes(r.bytes)} of layers, indexes and deltas freed; ${r.chunks}\n`);
      return 0;
    }
    case 'log': {
      // NAME: every version, each ref beside the version it is at; NAME@REF or NAME@VERSION: that line.
      const spec = need(positionals[0], 'NAME[@REF|@VERSION]');
      const { image, rev } = parseImageRev(spec);
      const q = spec.includes('@') ? `&ref=${encodeURIComponent(rev)}` : '';
      const limit = positiveInt(values.limit, '--limit', 'a number of versions');
      const [r, shown] = await Promise.all([
        client.json<VersionList>('GET', `/api/v1/images/${image}/versions?limit=${limit}${q}`).then((x) => x.body),
        client.json<ImageShow>('GET', `/api/v1/images/${image}`).then((x) => x.body),
      ]);
      const at = new Map<number, Array<{ name: string }>>();
      for (const x of shown.refs) at.set(x.version, [...(at.get(x.version) ?? []), x]);
      emit(io, json, { ...r, refs: shown.refs }, () => table([['VERSION', 'PARENT', 'REFS', 'KIND', 'AUTHOR', 'CHANGED', 'CHUNKS', 'TIME', 'MESSAGE'], ...r.versions.map((v) => [
        String(v.version), String(v.parent ?? '-'), at.has(v.version) ? refsCell(at.get(v.version)!, { width: 30 }) : '', v.kind, v.author,
        String(v.chunksChanged), String(v.chunksTotal), fmtTime(v.createdAt), v.message,
      ])], { maxWidth: { 4: 24 } }));
      return 0;
    }
    case 'verify': {
      const { image, rev } = parseImageRev(need(positionals[0], 'NAME[@REF|@VERSION]'));
      const r = await verifyVersion(client, image, rev, need(values.trust, '--trust FILE'));
      emit(io, json, r, () => `${image}@${rev} (version ${r.version}): manifest signed by key ${r.keyId}${r.viaChain ? ' (endorsed through the server\'s key chain)' : ''}; its index ${r.index} matches\n`);
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
      throw dfError('DF_ERR_USAGE', `unknown image command ${JSON.stringify(sub)}`);
  }
}

function policyText(p: PolicyView): string {
  const v = (k: keyof PolicyView['effective'], one: string) => `${p.effective[k]}${p.override[k] === null ? ' (server default)' : ''} ${p.effective[k] === 1 ? one : `${one}s`}`;
  return `keep the last ${v('keepLast', 'version')} of each ref's line, versions younger than ${v('keepDays', 'day')}, conflicts ${v('conflictDays', 'day')}`;
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

function positiveInt(s: string, option: string, what = 'a version number'): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < 1) throw dfError('DF_ERR_USAGE', `${option}: expected ${what}, got ${JSON.stringify(s)}`, { option });
  return n;
}
