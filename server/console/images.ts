import type { FastifyInstance, FastifyRequest } from 'fastify';
import { dfError } from '../../src/errors.js';
import { ChunkIndex } from '../../src/image/chunk-index.js';
import { chunkLength } from '../../src/image/geometry.js';
import type { RefRow, VersionRow } from '../../src/image/model.js';
import { isConflictRef } from '../../src/image/names.js';
import { layoutGraph, rowSvg } from './graph.js';
import { ago, bytes, csrfField, html, plural, raw, seg } from './html.js';
import type { ConsoleKit } from './kit.js';

/**
 * Images: the list; one image's versions as a graph (its refs, desktop lines and conflicts), its refs
 * with promote and roll back (compare-and-swap, confirmed on a page naming the old and new version),
 * its conflicts with their three resolutions, the diff of two versions, its boot declaration, its ref log.
 */

/** The line a conflict ref was kept beside: `conflicts/desktops/alice/20261207T…` → `desktops/alice`. */
export const conflictBase = (ref: string): string => ref.slice('conflicts/'.length).replace(/\/[^/]*$/, '');

export interface VersionDiff {
  a: number;
  b: number;
  chunks: number;
  positions: number;
  /** Bytes of the positions that differ. */
  bytes: number;
  /** Distinct chunk ids of `b` that `a` does not hold anywhere (what a disk at `a` fetches). */
  fetch: number;
  fetchBytes: number;
  /** Positions that are data in `b` and zero in `a`, and the reverse. */
  added: number;
  zeroed: number;
}

/** What changes from version `a` to `b` (pure: two chunk indexes). */
export function diffIndexes(a: ChunkIndex, b: ChunkIndex, av: number, bv: number): VersionDiff {
  const g = b.geometry;
  const inA = new Set<string>();
  for (let i = 0; i < a.count; i++) if (!a.isZeroAt(i)) inA.add(a.idAt(i).toString('hex'));
  const fetched = new Set<string>();
  const d: VersionDiff = { a: av, b: bv, chunks: b.count, positions: 0, bytes: 0, fetch: 0, fetchBytes: 0, added: 0, zeroed: 0 };
  for (let i = 0; i < b.count; i++) {
    const x = a.idAt(i);
    const y = b.idAt(i);
    if (x.equals(y)) continue;
    const len = chunkLength(g, i);
    d.positions++;
    d.bytes += len;
    const zx = a.isZeroAt(i);
    const zy = b.isZeroAt(i);
    if (zx && !zy) d.added++;
    if (!zx && zy) d.zeroed++;
    if (!zy) {
      const id = y.toString('hex');
      if (!inA.has(id) && !fetched.has(id)) {
        fetched.add(id);
        d.fetch++;
        d.fetchBytes += len;
      }
    }
  }
  return d;
}

const KIND_LABEL: Record<string, string> = { import: 'import', publish: 'publish', 'voi-commit': 'VOI commit', 'vdi-commit': 'VDI commit', rollback: 'rollback' };

export async function imagePages(app: FastifyInstance, kit: ConsoleKit, route: object): Promise<void> {
  const { ctx } = kit;
  const { catalog } = ctx;
  const img = (req: FastifyRequest) => (req.params as { image: string }).image;

  app.get('/images', route, async (req, reply) => {
    const now = ctx.now();
    const images = await catalog.listImages();
    const rows = await Promise.all(images.map(async (i) => ({ i, refs: await catalog.refs(i.name), versions: await ctx.meta.images.versionCount(i.name) })));
    return kit.render(req, reply, {
      title: 'Images', nav: 'images',
      body: rows.length === 0
        ? html`<p class="empty">No image yet: <code>deskfuse image create NAME --from disk.img</code> imports one.</p>`
        : html`<table class="grid"><thead><tr><th scope="col">Image</th><th scope="col">Size</th><th scope="col">Chunk</th><th scope="col">Versions</th><th scope="col">Refs</th><th scope="col">Conflicts</th><th scope="col">Boots</th><th scope="col">Created</th></tr></thead><tbody>
${rows.map(({ i, refs, versions }) => {
    const plain = refs.filter((r) => !isConflictRef(r.name) && !r.name.startsWith('desktops/'));
    const conflicts = refs.filter((r) => isConflictRef(r.name)).length;
    return html`<tr><th scope="row"><a href="/images/${seg(i.name)}">${i.name}</a></th><td>${bytes(i.virtualSize)}</td><td>${bytes(i.chunkSize)}</td><td>${versions}</td>
<td>${plain.map((r) => html`<span class="ref">${r.name}@${r.version}</span> `)}${refs.length - plain.length - conflicts > 0 ? html`<span class="muted">+${plural(refs.length - plain.length - conflicts, 'desktop line')}</span>` : ''}</td>
<td>${conflicts ? html`<span class="badge warn">${conflicts}</span>` : '0'}</td><td>${i.boot ? `kexec ${i.boot.kernel}` : html`<span class="muted">not declared</span>`}</td><td>${ago(i.createdAt, now)}</td></tr>`;
  })}</tbody></table>`,
    });
  });

  app.get('/images/:image', route, async (req, reply) => {
    const name = img(req);
    const image = await catalog.image(name);
    const now = ctx.now();
    const csrf = kit.csrf(req);
    const refs = await catalog.refs(name);
    const versions = await catalog.versions(name, { limit: 150 });
    const reflog = await catalog.refLog(name, undefined, 30);
    const byVersion = new Map<number, RefRow[]>();
    for (const r of refs) byVersion.set(r.version, [...(byVersion.get(r.version) ?? []), r]);
    const g = layoutGraph(versions);
    const vrow = new Map(versions.map((v) => [v.version, v]));
    const lines = refs.filter((r) => !isConflictRef(r.name));
    const conflicts = refs.filter((r) => isConflictRef(r.name));
    const base = `/images/${seg(name)}`;
    const refBadge = (r: RefRow) => html`<span class="ref${raw(isConflictRef(r.name) ? ' conflict' : r.name.startsWith('desktops/') ? ' desktop' : '')}">${r.name}</span>`;
    const refOptions = (sel?: string) => lines.map((r) => html`<option value="${r.name}"${raw(r.name === sel ? ' selected' : '')}>${r.name} (at ${r.version})</option>`);
    const b = image.boot;

    return kit.render(req, reply, {
      title: `Image ${name}`, nav: 'images',
      body: html`<dl class="facts"><dt>Size</dt><dd>${bytes(image.virtualSize)} (${image.virtualSize} bytes)</dd><dt>Chunk size</dt><dd>${bytes(image.chunkSize)}</dd>
<dt>Chunk ids</dt><dd>${image.hashAlg}</dd><dt>Created</dt><dd>${ago(image.createdAt, now)}</dd><dt>Versions</dt><dd>${await ctx.meta.images.versionCount(name)}</dd></dl>

<section aria-labelledby="graph-h"><h2 id="graph-h">Versions</h2>
<form method="get" action="${base}/diff" class="row"><label for="da">Diff version</label><input id="da" name="a" type="number" min="1" required class="num" value="${versions[1]?.version ?? ''}">
<label for="db">with</label><input id="db" name="b" type="number" min="1" required class="num" value="${versions[0]?.version ?? ''}"><button type="submit">Diff</button></form>
<table class="grid versions"><thead><tr><th scope="col"><span class="sr-only">Graph</span></th><th scope="col">Version</th><th scope="col">Refs</th><th scope="col">Kind</th><th scope="col">Author</th><th scope="col">When</th><th scope="col">Chunks changed</th><th scope="col">Message</th></tr></thead><tbody>
${g.rows.map((r) => {
    const v = vrow.get(r.version)!;
    const rs = byVersion.get(r.version) ?? [];
    return html`<tr id="v${v.version}"><td class="g">${raw(rowSvg(r, g.width, { conflict: rs.some((x) => isConflictRef(x.name)), head: rs.length > 0 }))}</td>
<td><a href="${base}/versions/${v.version}">${v.version}</a>${v.parent !== null ? html` <span class="muted">← ${v.parent}</span>` : ''}</td><td>${rs.map(refBadge)}</td><td>${KIND_LABEL[v.kind] ?? v.kind}</td>
<td>${v.author}</td><td>${ago(v.createdAt, now)}</td><td>${v.chunksChanged} <span class="muted">of ${v.chunksTotal}</span></td><td>${v.message}</td></tr>`;
  })}</tbody></table>${versions.length === 150 ? html`<p class="muted">The newest 150 versions.</p>` : ''}</section>

<section aria-labelledby="refs-h"><h2 id="refs-h">Refs</h2>
<table class="grid"><thead><tr><th scope="col">Ref</th><th scope="col">Version</th><th scope="col">Moved</th><th scope="col">Roll back or move to version</th></tr></thead><tbody>
${lines.map((r) => html`<tr><th scope="row">${refBadge(r)}</th><td><a href="${base}/versions/${r.version}">${r.version}</a></td><td>${ago(r.updatedAt, now)}</td>
<td><form method="post" action="${base}/refs/move" class="inline">${csrfField(csrf)}<input type="hidden" name="ref" value="${r.name}"><input type="hidden" name="expect" value="${r.version}">
<label for="mv-${r.name}" class="sr-only">Version for ${r.name}</label><input id="mv-${r.name}" name="version" type="number" min="1" required class="num" placeholder="version">
<button type="submit" aria-label="Move ${r.name}…">Move…</button></form></td></tr>`)}
</tbody></table>
<form method="post" action="${base}/refs/move" class="row">${csrfField(csrf)}<input type="hidden" name="mode" value="promote">
<label for="pr-from">Promote</label><select id="pr-from" name="from">${refOptions(lines.find((r) => r.name === 'test')?.name)}</select>
<label for="pr-to">to</label><select id="pr-to" name="ref">${refOptions('main')}</select><button type="submit">Promote…</button></form></section>

<section aria-labelledby="conf-h"><h2 id="conf-h">Conflicts ${conflicts.length ? html`<span class="badge warn">${conflicts.length}</span>` : ''}</h2>
${conflicts.length === 0 ? html`<p class="empty">No unresolved conflict.</p>` : html`<p class="hint">A conflict is a commit kept beside the line it raced (nothing is lost). Resolve it: <em>take it</em> (the line moves to it), <em>take the other</em> (the line stays, the conflict is given up), or <em>keep both</em> (it becomes a new ref).</p>
<table class="grid"><thead><tr><th scope="col">Conflict</th><th scope="col">Version</th><th scope="col">Line</th><th scope="col">Kept</th><th scope="col">Resolve</th></tr></thead><tbody>
${conflicts.map((c) => {
    const line = conflictBase(c.name);
    const head = refs.find((r) => r.name === line);
    const v = vrow.get(c.version);
    return html`<tr><th scope="row">${refBadge(c)}</th><td><a href="${base}/versions/${c.version}">${c.version}</a>${v ? html` <span class="muted">${KIND_LABEL[v.kind]} by ${v.author}</span>` : ''}</td>
<td>${line}${head ? html` at <a href="${base}/versions/${head.version}">${head.version}</a>` : html` <span class="muted">(gone)</span>`}</td><td>${ago(c.updatedAt, now)}</td>
<td><form method="post" action="${base}/conflicts/resolve" class="inline">${csrfField(csrf)}<input type="hidden" name="conflict" value="${c.name}">
<button type="submit" name="take" value="this" title="move ${line} to version ${c.version}">Take it…</button>
<button type="submit" name="take" value="other" title="keep ${line} where it is; give the conflict up">Take the other…</button>
<label for="kb-${c.name}" class="sr-only">New ref name for ${c.name}</label><input id="kb-${c.name}" name="newRef" placeholder="new ref" class="short" value="${line.replace(/^desktops\//, '')}-kept">
<button type="submit" name="take" value="both">Keep both…</button></form></td></tr>`;
  })}</tbody></table>`}</section>

<section aria-labelledby="boot-h"><h2 id="boot-h">Boot declaration</h2>
<p class="hint">The Linux kernel the image boots, for the agent's kexec hand-off (<code>deskfuse image boot</code>). ${b ? html`Now: partition ${b.partition}, <code>${b.kernel}</code>${b.initrd ? html`, <code>${b.initrd}</code>` : ''}.` : 'Not declared: endpoints reboot (or BootNext) into their disk.'}</p>
<form method="post" action="${base}/boot" class="row">${csrfField(csrf)}
<label for="bp">Partition</label><input id="bp" name="partition" type="number" min="1" max="128" required class="num" value="${b?.partition ?? 1}">
<label for="bk">Kernel</label><input id="bk" name="kernel" required placeholder="/vmlinuz" value="${b?.kernel ?? ''}">
<label for="bi">Initrd</label><input id="bi" name="initrd" placeholder="/initrd.img" value="${b?.initrd ?? ''}">
<label for="bc">Command line</label><input id="bc" name="cmdline" class="wide" placeholder="root=/dev/sda1 ro" value="${b?.cmdline ?? ''}">
<button type="submit">Save</button></form></section>

<section aria-labelledby="log-h"><h2 id="log-h">Ref log</h2><table class="grid"><thead><tr><th scope="col">#</th><th scope="col">Ref</th><th scope="col">Move</th><th scope="col">Why</th><th scope="col">Who</th><th scope="col">When</th></tr></thead><tbody>
${reflog.map((e) => html`<tr><td>${e.seq}</td><td>${e.ref}</td><td>${e.deleted ? `deleted (was ${e.oldVersion})` : `${e.oldVersion ?? 'new'} → ${e.newVersion}`}</td><td>${e.reason}</td><td>${e.author}</td><td>${ago(e.at, now)}</td></tr>`)}</tbody></table></section>`,
    });
  });

  app.get('/images/:image/versions/:version', route, async (req, reply) => {
    const name = img(req);
    const n = Number((req.params as { version: string }).version);
    if (!Number.isInteger(n) || n < 1) throw dfError('DF_ERR_BAD_REQUEST', 'version: expected a version number');
    const v = await catalog.version(name, n);
    const refs = (await catalog.refs(name)).filter((r) => r.version === n);
    const now = ctx.now();
    return kit.render(req, reply, {
      title: `${name} version ${n}`, nav: 'images',
      body: html`<dl class="facts"><dt>Kind</dt><dd>${KIND_LABEL[v.kind] ?? v.kind}</dd><dt>Parent</dt><dd>${v.parent !== null ? html`<a href="/images/${seg(name)}/versions/${v.parent}">${v.parent}</a> (<a href="/images/${seg(name)}/diff?a=${v.parent}&amp;b=${n}">diff</a>)` : 'none (the first)'}</dd>
<dt>Author</dt><dd>${v.author}</dd><dt>When</dt><dd>${ago(v.createdAt, now)} <span class="muted">${v.createdAt}</span></dd><dt>Message</dt><dd>${v.message || html`<span class="muted">none</span>`}</dd>
<dt>Chunks changed</dt><dd>${v.chunksChanged} of ${v.chunksTotal} non-zero</dd><dt>Refs here</dt><dd>${refs.length ? refs.map((r) => html`<span class="ref">${r.name}</span> `) : 'none'}</dd>
<dt>Layer</dt><dd class="mono small">${v.layer}</dd><dt>Index</dt><dd class="mono small">${v.index}</dd></dl><p><a href="/images/${seg(name)}#v${n}">Back to ${name}</a></p>`,
    });
  });

  app.get('/images/:image/diff', route, async (req, reply) => {
    const name = img(req);
    const q = req.query as { a?: string; b?: string };
    const a = Number(q.a);
    const b = Number(q.b);
    if (!Number.isInteger(a) || !Number.isInteger(b) || a < 1 || b < 1) throw dfError('DF_ERR_BAD_REQUEST', 'give two version numbers: a and b');
    const [va, vb] = await Promise.all([catalog.version(name, a), catalog.version(name, b)]);
    const [ia, ib] = await Promise.all([catalog.indexBytes(name, a), catalog.indexBytes(name, b)]);
    const d = diffIndexes(ChunkIndex.decode(ia), ChunkIndex.decode(ib), a, b);
    const cell = (v: VersionRow) => html`<a href="/images/${seg(name)}/versions/${v.version}">${v.version}</a> ${KIND_LABEL[v.kind]} by ${v.author}, ${ago(v.createdAt, ctx.now())}`;
    return kit.render(req, reply, {
      title: `${name}: version ${a} → ${b}`, nav: 'images',
      body: html`<dl class="facts"><dt>From</dt><dd>${cell(va)}</dd><dt>To</dt><dd>${cell(vb)}</dd>
<dt>Chunk positions that differ</dt><dd id="diff-positions">${d.positions} of ${d.chunks} (${bytes(d.bytes)})</dd>
<dt>New data there</dt><dd>${plural(d.added, 'position')} zero before, ${plural(d.zeroed, 'position')} zeroed</dd>
<dt>A disk at ${a} fetches</dt><dd id="diff-fetch">${plural(d.fetch, 'chunk')} (${bytes(d.fetchBytes)} before compression; the rest it has, or are zero)</dd></dl>
<p><a href="/images/${seg(name)}">Back to ${name}</a></p>`,
    });
  });

  // Promote (a ref to another's head) or move a ref to a version (roll back): first a page naming old
  // and new, then the compare-and-swap with the old as `expect` (someone else's move in between: refused).
  app.post('/images/:image/refs/move', route, async (req, reply) => {
    const name = img(req);
    const f = kit.form(req);
    const base = `/images/${seg(name)}`;
    if (f.confirm !== '1') {
      try {
        const refs = await catalog.refs(name);
        const cur = refs.find((r) => r.name === f.ref);
        if (!f.ref) throw dfError('DF_ERR_BAD_REQUEST', 'ref: which ref to move');
        const from = f.mode === 'promote' ? refs.find((r) => r.name === f.from) : undefined;
        if (f.mode === 'promote' && !from) throw dfError('DF_ERR_REF_NOT_FOUND', `image ${name} has no ref ${f.from ?? ''}`);
        const to = from ? from.version : Number(f.version);
        const v = await catalog.version(name, to);
        const expect = f.expect !== undefined && f.expect !== '' ? Number(f.expect) : cur?.version ?? null;
        const reason = from ? `console: promote ${from.name} → ${f.ref}` : cur && to < cur.version ? `console: roll back ${f.ref} to ${to}` : `console: move ${f.ref} to ${to}`;
        if (cur && cur.version === to) throw dfError('DF_ERR_BAD_REQUEST', `${f.ref} is already at version ${to}`);
        return kit.render(req, reply, {
          title: 'Confirm the ref move', nav: 'images',
          body: html`<form method="post" action="${base}/refs/move" class="confirm">${csrfField(kit.csrf(req))}
<input type="hidden" name="confirm" value="1"><input type="hidden" name="ref" value="${f.ref}"><input type="hidden" name="version" value="${to}">
<input type="hidden" name="expect" value="${expect ?? 'none'}"><input type="hidden" name="reason" value="${reason}">
<p id="confirm-text">Move <strong>${f.ref}</strong> of ${name} from version <strong>${expect ?? 'none'}</strong> to version <strong>${to}</strong>${from ? ` (the head of ${from.name})` : ''}?</p>
<p class="muted">Version ${to}: ${KIND_LABEL[v.kind]} by ${v.author}, ${v.message || 'no message'}. The move is a compare-and-swap: if ${f.ref} moved since this page, nothing changes. The ref log keeps the old position.</p>
<p><button type="submit">Move ${f.ref} to ${to}</button> <a href="${base}">Cancel</a></p></form>`,
        });
      } catch (err) {
        return kit.act(req, reply, base, async () => { throw err; });
      }
    }
    return kit.act(req, reply, base, async () => {
      const to = Number(f.version);
      const expect = f.expect === 'none' ? null : Number(f.expect);
      const r = await catalog.moveRef(name, f.ref ?? '', to, expect, 'admin', (f.reason ?? 'console: ref set').slice(0, 400));
      return `${r.name} moved from ${expect ?? 'none'} to ${r.version}.`;
    });
  });

  // A conflict: take it (its line moves to it), take the other (it is given up), keep both (a new ref).
  app.post('/images/:image/conflicts/resolve', route, async (req, reply) => {
    const name = img(req);
    const f = kit.form(req);
    const base = `/images/${seg(name)}`;
    const conflict = f.conflict ?? '';
    const plan = async () => {
      if (!isConflictRef(conflict)) throw dfError('DF_ERR_BAD_REQUEST', `${conflict} is not a conflict ref`);
      const refs = await catalog.refs(name);
      const c = refs.find((r) => r.name === conflict);
      if (!c) throw dfError('DF_ERR_REF_NOT_FOUND', `image ${name} has no ref ${conflict} (resolved already?)`);
      const line = conflictBase(conflict);
      const head = refs.find((r) => r.name === line);
      return { c, line, head };
    };
    if (f.confirm !== '1') {
      try {
        const { c, line, head } = await plan();
        const take = f.take;
        const text = take === 'this'
          ? html`Move <strong>${line}</strong> from version <strong>${head?.version ?? 'none'}</strong> to the conflict's version <strong>${c.version}</strong>, then drop the ref ${conflict}. Version ${head?.version ?? '–'} stays in the ref log.`
          : take === 'other'
            ? html`Keep <strong>${line}</strong> at version <strong>${head?.version ?? 'none'}</strong> and give up the conflict: the ref ${conflict} (version <strong>${c.version}</strong>) is deleted; the ref log keeps it.`
            : html`Keep both: make the new ref <strong>${f.newRef ?? ''}</strong> at version <strong>${c.version}</strong>, leave <strong>${line}</strong> at <strong>${head?.version ?? 'none'}</strong>, then drop ${conflict}.`;
        if (take !== 'this' && take !== 'other' && take !== 'both') throw dfError('DF_ERR_BAD_REQUEST', 'take: this, other or both');
        return kit.render(req, reply, {
          title: 'Resolve the conflict', nav: 'images',
          body: html`<form method="post" action="${base}/conflicts/resolve" class="confirm">${csrfField(kit.csrf(req))}
<input type="hidden" name="confirm" value="1"><input type="hidden" name="conflict" value="${conflict}"><input type="hidden" name="take" value="${take}">
<input type="hidden" name="expect" value="${head?.version ?? 'none'}"><input type="hidden" name="newRef" value="${f.newRef ?? ''}">
<p id="confirm-text">${text}</p><p><button type="submit">Resolve</button> <a href="${base}">Cancel</a></p></form>`,
        });
      } catch (err) {
        return kit.act(req, reply, base, async () => { throw err; });
      }
    }
    return kit.act(req, reply, base, async () => {
      const { c, line } = await plan();
      const expect = f.expect === 'none' ? null : Number(f.expect);
      if (f.take === 'this') {
        await catalog.moveRef(name, line, c.version, expect, 'admin', `console: resolve ${conflict}: take it`);
        await ctx.lifecycle.deleteRef(name, conflict, { force: false, author: 'admin' });
        return `${line} moved from ${expect ?? 'none'} to ${c.version}; ${conflict} resolved.`;
      }
      if (f.take === 'other') {
        await ctx.lifecycle.deleteRef(name, conflict, { force: true, author: 'admin' });
        return `${conflict} given up; ${line} stays at ${expect ?? 'none'}.`;
      }
      const newRef = (f.newRef ?? '').trim();
      if (!newRef || isConflictRef(newRef)) throw dfError('DF_ERR_REF_NAME', 'keep both: give the new ref a name outside conflicts/');
      await catalog.moveRef(name, newRef, c.version, null, 'admin', `console: resolve ${conflict}: keep both`);
      await ctx.lifecycle.deleteRef(name, conflict, { force: false, author: 'admin' });
      return `${conflict} kept as ${newRef} (version ${c.version}); ${line} stays at ${expect ?? 'none'}.`;
    });
  });

  app.post('/images/:image/boot', route, async (req, reply) => {
    const name = img(req);
    const f = kit.form(req);
    return kit.act(req, reply, `/images/${seg(name)}#boot-h`, async () => {
      await catalog.image(name);
      const partition = Number(f.partition);
      const boot = { partition, kernel: f.kernel ?? '', ...(f.initrd ? { initrd: f.initrd } : {}), cmdline: f.cmdline ?? '' };
      const bad = !Number.isInteger(partition) || partition < 1 || partition > 128 ? 'partition: 1 to 128'
        : !/^\/[^\0]{1,255}$/.test(boot.kernel) ? 'kernel: an absolute path on the partition, e.g. /vmlinuz'
        : boot.initrd !== undefined && !/^\/[^\0]{1,255}$/.test(boot.initrd) ? 'initrd: an absolute path, e.g. /initrd.img'
        : boot.cmdline.length > 2048 ? 'command line: at most 2048 characters' : undefined;
      if (bad) throw dfError('DF_ERR_BAD_REQUEST', bad);
      await ctx.meta.images.setImageBoot(name, boot);
      return `Image ${name} boots ${boot.kernel} from partition ${partition}.`;
    });
  });
}

