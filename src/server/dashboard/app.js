// parleyd dashboard: reads one JSON snapshot a second from
// /dashboard/events (Server-Sent Events) and draws figures and small
// time-series charts on canvases. No library, no external fetch.
'use strict';

const HISTORY = 120; // points kept per chart (two minutes)
const series = {};   // chart id -> array of arrays of numbers
let prev = null;     // the previous snapshot
const windowDeltas = []; // [{t, key, delta}] for "last minute" error figures
const recent = [];   // newest first: {t, text}

function $(id) { return document.getElementById(id); }

function key(name, labels) {
  if (!labels) return name;
  const parts = Object.keys(labels).map((k) => k + '="' + labels[k] + '"');
  return name + '{' + parts.join(',') + '}';
}

function val(m, name, labels) {
  const v = m[key(name, labels)];
  return typeof v === 'number' ? v : 0;
}

// Every sample of a family with one label: {labelValue: value}.
function byLabel(m, name, label) {
  const out = {};
  const prefix = name + '{' + label + '="';
  for (const k of Object.keys(m)) {
    if (!k.startsWith(prefix)) continue;
    const rest = k.slice(prefix.length);
    const end = rest.indexOf('"');
    if (end >= 0 && rest.slice(end) === '"}') out[rest.slice(0, end)] = m[k];
  }
  return out;
}

function fmt(n) {
  if (!isFinite(n)) return '–';
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function bytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + ' ' + u[i];
}

function duration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return d + 'd ' + h + 'h';
  if (h) return h + 'h ' + m + 'm';
  if (m) return m + 'm ' + sec + 's';
  return sec + 's';
}

function ms(sec) { return isFinite(sec) ? (sec * 1000).toFixed(2) + ' ms' : '–'; }

function set(id, text) {
  const el = $(id);
  if (el && el.textContent !== text) el.textContent = text;
}

function push(id, values) {
  const s = series[id] || (series[id] = values.map(() => []));
  values.forEach((v, i) => {
    s[i].push(v);
    if (s[i].length > HISTORY) s[i].shift();
  });
  draw(id);
}

function draw(id) {
  const canvas = $(id);
  const s = series[id];
  if (!canvas || !s) return;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const line of s) for (const v of line) if (v > max) max = v;
  if (max <= 0) max = 1;
  const style = getComputedStyle(document.documentElement);
  ctx.fillStyle = style.getPropertyValue('--muted');
  ctx.font = '10px system-ui, sans-serif';
  ctx.fillText(fmt(max), 2, 10);
  // A minute wide at first, two minutes once there is that much.
  const span = Math.max(60, Math.min(HISTORY, s[0].length)) - 1;
  s.forEach((line, i) => {
    ctx.strokeStyle = style.getPropertyValue('--c' + i) || '#888';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.forEach((v, k) => {
      const x = w - (line.length - 1 - k) * (w / span);
      const y = h - 2 - (v / max) * (h - 14);
      if (k === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  canvas.dataset.points = String(s[0].length);
}

// Per-second rate of a counter between two snapshots.
function rate(m, name, labels, dt) {
  if (!prev || dt <= 0) return 0;
  return Math.max(0, val(m, name, labels) - val(prev.m, name, labels)) / dt;
}

function sumFamily(m, name, label) {
  return Object.values(byLabel(m, name, label)).reduce((a, b) => a + b, 0);
}

const ERROR_FAMILIES = [
  ['parley_messages_failed_total', 'code', 'send_message failed'],
  ['parley_chat_errors_total', 'code', 'request error'],
  ['parley_chat_refusals_total', 'code', 'limit refusal'],
  ['parley_chat_connect_refused_total', 'code', 'connect refused'],
  ['parley_http_refusals_total', 'reason', 'HTTP refusal'],
  ['parley_admin_refusals_total', 'reason', 'admin refusal'],
];

function updateErrors(snap) {
  const m = snap.m;
  const rows = [];
  const now = snap.t;
  while (windowDeltas.length && windowDeltas[0].t < now - 60000) windowDeltas.shift();
  for (const [fam, label, what] of ERROR_FAMILIES) {
    const cur = byLabel(m, fam, label);
    const old = prev ? byLabel(prev.m, fam, label) : {};
    for (const code of Object.keys(cur)) {
      const d = cur[code] - (old[code] || 0);
      if (prev && d > 0) {
        windowDeltas.push({ t: now, k: what + '/' + code, d });
        recent.unshift({ t: now, text: what + ': ' + code + ' (+' + d + ')' });
      }
      if (cur[code] > 0) rows.push([what, code, cur[code]]);
    }
  }
  recent.splice(20);
  const minute = {};
  for (const e of windowDeltas) minute[e.k] = (minute[e.k] || 0) + e.d;
  const body = $('errors-body');
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 4; td.className = 'muted'; td.textContent = 'none yet';
    tr.append(td); body.append(tr);
  }
  for (const [what, code, total] of rows) {
    const tr = document.createElement('tr');
    for (const text of [what, code, fmt(total), fmt(minute[what + '/' + code] || 0)]) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
  const ol = $('errors-recent');
  ol.replaceChildren();
  if (!recent.length) {
    const li = document.createElement('li');
    li.className = 'muted'; li.textContent = 'nothing recent';
    ol.append(li);
  }
  for (const r of recent) {
    const li = document.createElement('li');
    li.textContent = new Date(r.t).toLocaleTimeString() + ' ' + r.text;
    ol.append(li);
  }
}

function update(snap) {
  const m = snap.m;
  const dt = prev ? (snap.t - prev.t) / 1000 : 0;
  const ver = Object.keys(byLabel(m, 'parley_build_info', 'version'))[0];
  if (ver) set('version', ver);

  // Connections
  const wsS = val(m, 'parley_engine_sessions', { transport: 'websocket' });
  const poS = val(m, 'parley_engine_sessions', { transport: 'polling' });
  const raw = val(m, 'parley_websocket_connections');
  set('sessions-websocket', fmt(wsS));
  set('sessions-polling', fmt(poS));
  set('chat-sockets', fmt(val(m, 'parley_chat_sockets')));
  set('chat-users', fmt(val(m, 'parley_chat_users')));
  set('ws-connections', fmt(raw));
  set('http-connections', fmt(val(m, 'parley_http_connections')));
  set('upgrades', fmt(val(m, 'parley_engine_upgrades_total')));
  set('events-rate', fmt(rate(m, 'parley_sio_events_received_total', null, dt)) + ' / ' +
      fmt(rate(m, 'parley_sio_events_sent_total', null, dt)));
  push('chart-connections', [wsS, poS, raw]);

  // Messages
  const failed = sumFamily(m, 'parley_messages_failed_total', 'code');
  set('messages-stored', fmt(val(m, 'parley_messages_stored_total')));
  set('messages-delivered', fmt(val(m, 'parley_messages_receipts_total', { status: 'delivered' })));
  set('messages-read', fmt(val(m, 'parley_messages_receipts_total', { status: 'read' })));
  set('messages-failed', fmt(failed));
  set('typing', fmt(val(m, 'parley_typing_events_total')));
  const stored = rate(m, 'parley_messages_stored_total', null, dt);
  set('messages-rate', fmt(stored));
  const avg = (name) => {
    if (!prev) return NaN;
    const dc = val(m, name + '_count') - val(prev.m, name + '_count');
    const ds = val(m, name + '_sum') - val(prev.m, name + '_sum');
    return dc > 0 ? ds / dc : NaN;
  };
  set('ack-latency', ms(avg('parley_messages_ack_seconds')));
  set('commit-latency', ms(avg('parley_store_commit_seconds')));
  const failedPrev = prev ? sumFamily(prev.m, 'parley_messages_failed_total', 'code') : failed;
  push('chart-messages', [stored,
    rate(m, 'parley_messages_receipts_total', { status: 'delivered' }, dt),
    rate(m, 'parley_messages_receipts_total', { status: 'read' }, dt),
    dt > 0 ? Math.max(0, failed - failedPrev) / dt : 0]);

  updateErrors(snap);

  // Presence
  const on = val(m, 'parley_presence_users', { status: 'online' });
  const away = val(m, 'parley_presence_users', { status: 'away' });
  const busy = val(m, 'parley_presence_users', { status: 'busy' });
  set('presence-online', fmt(on));
  set('presence-away', fmt(away));
  set('presence-busy', fmt(busy));
  set('presence-rate', fmt(rate(m, 'parley_presence_updates_total', null, dt)));
  push('chart-presence', [on, away, busy]);

  // Notifications
  const supp = sumFamily(m, 'parley_notifications_suppressed_total', 'reason');
  set('notif-created', fmt(val(m, 'parley_notifications_created_total')));
  set('notif-pushed', fmt(val(m, 'parley_notifications_pushed_total')));
  set('notif-suppressed', fmt(supp));
  set('notif-read', fmt(val(m, 'parley_notifications_read_total')));
  const reasons = byLabel(m, 'parley_notifications_suppressed_total', 'reason');
  set('notif-reasons', Object.keys(reasons).filter((r) => reasons[r] > 0)
    .map((r) => r.replace(/_/g, ' ') + ': ' + reasons[r]).join(' · '));
  const suppPrev = prev ? sumFamily(prev.m, 'parley_notifications_suppressed_total', 'reason') : supp;
  push('chart-notifications', [rate(m, 'parley_notifications_created_total', null, dt),
    rate(m, 'parley_notifications_pushed_total', null, dt),
    dt > 0 ? Math.max(0, supp - suppPrev) / dt : 0,
    rate(m, 'parley_notifications_read_total', null, dt)]);

  // Node health
  const start = val(m, 'process_start_time_seconds');
  set('uptime', start ? duration(snap.t / 1000 - start) : '–');
  const rss = val(m, 'process_resident_memory_bytes');
  set('rss', bytes(rss));
  set('fds', fmt(val(m, 'process_open_fds')) + ' / ' + fmt(val(m, 'process_max_fds')));
  set('cpu', (rate(m, 'process_cpu_seconds_total', null, dt) * 100).toFixed(1) + ' %');
  const lag = val(m, 'parley_event_loop_lag_seconds');
  set('lag', ms(lag));
  set('commits', fmt(val(m, 'parley_store_commits_total')));
  const nodes = val(m, 'parley_cluster_nodes');
  set('cluster', nodes > 1 ? nodes + ' nodes' : 'Single node (no cluster adapter).');
  push('chart-lag', [lag * 1000]);

  prev = snap;
}

function connect() {
  const es = new EventSource('/dashboard/events');
  es.onopen = () => {
    $('live').className = 'dot on';
    set('live-text', 'live');
  };
  es.onmessage = (ev) => {
    let snap;
    try { snap = JSON.parse(ev.data); } catch (e) { return; }
    update(snap);
  };
  es.onerror = () => {
    $('live').className = 'dot off';
    set('live-text', 'reconnecting…');
  };
}

window.addEventListener('resize', () => Object.keys(series).forEach(draw));
connect();
