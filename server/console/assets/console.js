// deskfuse console: filter as you type, live endpoint rows (Server-Sent Events), live VDI counters.
// Everything works without this script too (forms submit, pages reload); it only saves reloads.
'use strict';

function filterRows(tbody) {
  const box = document.querySelector('[data-filter]');
  const sel = document.querySelector('[data-filter-state]');
  const words = (box ? box.value : '').toLowerCase().split(/\s+/).filter(Boolean);
  const state = sel ? sel.value : '';
  let shown = 0;
  const rows = tbody.rows;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const text = r.dataset.search || '';
    const ok = (!state || r.dataset.state === state) && words.every((w) => text.includes(w));
    r.hidden = !ok;
    if (ok) shown++;
  }
  const count = document.getElementById('count');
  if (count) count.textContent = `${shown} ${shown === 1 ? 'endpoint' : 'endpoints'} shown of ${rows.length}`;
}

function setupFilter() {
  const box = document.querySelector('[data-filter]');
  if (!box) return;
  const tbody = document.querySelector(box.dataset.filter);
  const sel = document.querySelector('[data-filter-state]');
  let t;
  const run = () => { clearTimeout(t); t = setTimeout(() => filterRows(tbody), 60); };
  box.addEventListener('input', run);
  if (sel) sel.addEventListener('change', run);
  // Filtering happens here as you type: the form's submit only keeps the filter in the URL.
}

function setupLive() {
  const el = document.querySelector('[data-live]');
  if (!el || !window.EventSource) return;
  const tbody = document.querySelector('#endpoints tbody');
  const state = document.getElementById('live-state');
  const es = new EventSource(el.dataset.live);
  es.addEventListener('open', () => { if (state) state.textContent = 'connected'; el.dataset.connected = '1'; });
  es.addEventListener('row', (m) => {
    const { id, html } = JSON.parse(m.data);
    const tpl = document.createElement('template');
    tpl.innerHTML = html.trim();
    const row = tpl.content.firstElementChild;
    const old = document.getElementById(`ep-${id}`);
    if (old) old.replaceWith(row);
    else if (tbody) tbody.prepend(row);
    row.classList.add('changed');
    setTimeout(() => row.classList.remove('changed'), 1500);
    if (tbody) filterRows(tbody);
  });
  es.addEventListener('expired', () => { es.close(); location.href = '/login?expired=1&next=' + encodeURIComponent(location.pathname + location.search); });
  es.addEventListener('error', () => {
    if (es.readyState === EventSource.CLOSED) location.href = '/login?expired=1&next=' + encodeURIComponent(location.pathname + location.search);
    else if (state) state.textContent = 'reconnecting…';
  });
}

function setupPoll() {
  const table = document.querySelector('[data-poll]');
  if (!table) return;
  const fmt = (n) => {
    if (n === null || n === undefined) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n, i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${u[i]}`;
  };
  const tick = async () => {
    try {
      const r = await fetch(table.dataset.poll, { headers: { accept: 'application/json' }, credentials: 'same-origin' });
      if (r.status === 401) { location.href = '/login?expired=1'; return; }
      if (!r.ok) return;
      const { sessions } = await r.json();
      for (const s of sessions) {
        const row = table.querySelector(`[data-session="${s.id}"]`);
        if (!row) continue;
        const set = (f, v) => { const c = row.querySelector(`[data-f="${f}"]`); if (c && c.textContent !== String(v)) c.textContent = String(v); };
        set('connections', s.connections);
        set('changed', s.changed ?? '–');
        set('bytesWritten', fmt(s.bytesWritten));
        set('flushes', s.flushes ?? '–');
      }
    } catch { /* the next tick tries again */ }
  };
  setInterval(tick, 3000);
}

document.addEventListener('DOMContentLoaded', () => {
  setupFilter();
  const tbody = document.querySelector('#endpoints tbody');
  if (tbody && document.querySelector('[data-filter]')) filterRows(tbody);
  setupLive();
  setupPoll();
});
