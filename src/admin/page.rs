//! The status page: one self-contained HTML document that polls `/status.json`.

/// The status page: plain HTML, CSS and JavaScript, no external assets; it polls
/// `/status.json` every two seconds.
pub const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>outpost status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}
h1{font-size:20px;margin:0 0 16px}h2{font-size:15px;margin:20px 0 8px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;min-width:150px}
.card b{display:block;font-size:24px}.muted{color:#57606a}
table{border-collapse:collapse;background:#fff;width:100%;max-width:1100px}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
</style></head><body>
<h1>outpost <span class="muted" id="uptime"></span></h1>
<div class="cards">
<div class="card">hit ratio<b id="hit_ratio">-</b></div>
<div class="card">byte hit ratio<b id="byte_hit_ratio">-</b></div>
<div class="card">requests/s<b id="rps">-</b></div>
<div class="card">requests<b id="requests">-</b></div>
<div class="card">memory tier<b id="memory">-</b><span class="muted" id="memory_detail"></span></div>
<div class="card" id="disk_card" hidden>disk tier<b id="disk">-</b><span class="muted" id="disk_detail"></span></div>
<div class="card" id="partial_card" hidden>partial content<b id="partial">-</b><span class="muted" id="partial_detail"></span></div>
<div class="card" id="offline_card" hidden>mode<b>offline</b><span class="muted">serving stored objects only</span></div>
</div>
<h2>By cache status</h2><table id="by_status"></table>
<h2>Top keys by hits</h2><table id="top_hits"></table>
<h2>Top keys by bytes</h2><table id="top_bytes"></table>
<h2>Recent origin errors</h2><table id="errors"></table>
<div id="pools_card" hidden><h2>Origin pools</h2><table id="pools"></table></div>
<div id="mirror_card" hidden><h2>Package mirror</h2><table id="mirror"></table></div>
<script>
const el = id => document.getElementById(id);
const pct = x => (100 * x).toFixed(1) + '%';
const size = b => b >= 1<<30 ? (b/(1<<30)).toFixed(1)+' GiB' : b >= 1<<20 ? (b/(1<<20)).toFixed(1)+' MiB' : b >= 1024 ? (b/1024).toFixed(1)+' KiB' : b+' B';
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function rows(table, head, items, cells) {
  el(table).innerHTML = '<tr>' + head.map(h => '<th>' + h + '</th>').join('') + '</tr>' +
    (items.length ? items.map(i => '<tr>' + cells(i).map(([v, n]) => '<td' + (n ? ' class="n"' : '') + '>' + esc(v) + '</td>').join('') + '</tr>').join('')
                  : '<tr><td colspan="' + head.length + '" class="muted">none yet</td></tr>');
}
async function refresh() {
  try {
    const s = await (await fetch('/status.json', {cache: 'no-store'})).json();
    el('uptime').textContent = 'up ' + s.uptime_seconds + ' s';
    el('hit_ratio').textContent = pct(s.hit_ratio);
    el('byte_hit_ratio').textContent = pct(s.byte_hit_ratio);
    el('rps').textContent = s.requests_per_second.toFixed(1);
    el('requests').textContent = s.requests;
    const m = s.tiers.memory;
    el('memory').textContent = m.entries + (m.entries === 1 ? ' entry' : ' entries');
    el('memory_detail').textContent = size(m.bytes) + ' of ' + size(m.capacity);
    const d = s.tiers.disk;
    el('disk_card').hidden = !d;
    if (d) {
      el('disk').textContent = d.degraded ? 'failed' : d.entries + (d.entries === 1 ? ' entry' : ' entries');
      el('disk_detail').textContent = size(d.bytes) + ' of ' + size(d.capacity) + (d.degraded ? ' (memory only)' : '');
    }
    const p = s.tiers.partial;
    el('partial_card').hidden = !p || p.entries === 0;
    if (p) {
      el('partial').textContent = p.entries + (p.entries === 1 ? ' resource' : ' resources');
      el('partial_detail').textContent = size(p.bytes) + ' of ' + size(p.capacity);
    }
    el('offline_card').hidden = !s.tiers.offline;
    rows('by_status', ['cache status', 'requests'], Object.entries(s.by_cache_status).filter(([, n]) => n > 0), ([k, n]) => [[k], [n, 1]]);
    rows('top_hits', ['url', 'hits', 'bytes'], s.top_keys_by_hits, k => [[k.url], [k.hits, 1], [size(k.bytes), 1]]);
    rows('top_bytes', ['url', 'bytes', 'hits'], s.top_keys_by_bytes, k => [[k.url], [size(k.bytes), 1], [k.hits, 1]]);
    rows('errors', ['at', 'site', 'url', 'error', 'detail'], s.recent_origin_errors, e => [[e.at], [e.site], [e.url], [e.error], [e.detail]]);
    const pools = s.tiers.pools || [];
    el('pools_card').hidden = pools.length === 0;
    const members = pools.flatMap(p => p.members.map(m => ({pool: p.name, selection: p.selection, ...m})));
    rows('pools', ['pool', 'server', 'address', 'state', 'weight', 'in flight'], members,
      m => [[m.pool + ' (' + m.selection + ')'], [m.server], [m.address], [m.state + (m.backup ? ', backup' : '')], [m.weight, 1], [m.outstanding, 1]]);
    const registries = (s.mirror && s.mirror.registries) || [];
    el('mirror_card').hidden = registries.length === 0;
    const ago = t => t ? Math.max(0, Math.round(Date.now() / 1000 - t)) + ' s ago' : 'never';
    rows('mirror', ['registry', 'path', 'objects', 'stored', 'hit ratio', 'last upstream contact', 'integrity failures', 'documents rewritten (waited for room)'], registries,
      r => [[r.name + ' (' + r.kind + ')'], [r.path], [r.objects, 1], [size(r.bytes), 1], [pct(r.hit_ratio), 1], [ago(r.last_upstream_contact)], [r.integrity_failures, 1], [r.documents_rewritten + ' (' + r.documents_waited + ')', 1]]);
  } catch (e) { el('uptime').textContent = 'status unavailable: ' + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"#;
