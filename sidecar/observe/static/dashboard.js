// Sidecar's live dashboard: server-sent events from /dashboard/events, charts drawn on canvas.
// Channel and event names come from clients: they are only ever set as text, never as HTML.
"use strict";

const HISTORY = 300; // points kept: five minutes at one a second
const MIN_WINDOW = 60; // seconds a chart spans at least, until there is more history
const RATE_WINDOW = 5; // seconds the cards' rates are averaged over
const RECENT_ROWS = 12;
const points = [];
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
const axis = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

function num(value) {
  return value === null || value === undefined ? "-" : fmt.format(value);
}

function ms(value) {
  return value >= 10 ? fmt.format(value) : axis.format(value);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${fmt.format(n)} ${units[i]}`;
}

function duration(seconds) {
  const days = seconds / 86400;
  if (Math.abs(days) >= 2) return `${Math.round(days)} days`;
  const hours = seconds / 3600;
  if (Math.abs(hours) >= 2) return `${Math.round(hours)} hours`;
  return `${Math.round(seconds / 60)} minutes`;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// One chart: lines over the last `span` seconds, y from 0 to a rounded maximum. A series
// with `right: true` has its own scale, labelled on the right (messages in are a few a
// second where messages out are thousands).
function drawChart(canvas, series, span) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  const scale = (right) => niceCeiling(Math.max(0, ...series.filter((s) => !!s.right === right)
    .flatMap((s) => s.values.filter((v) => v !== null))));
  const maxLeft = scale(false);
  const hasRight = series.some((s) => s.right);
  const maxRight = hasRight ? scale(true) : 0;
  const labels = (max) => [0, 1, 2, 3, 4].map((i) => axis.format((max * i) / 4));
  const widest = (max) => Math.max(...labels(max).map((t) => ctx.measureText(t).width));
  const left = widest(maxLeft) + 10, right = hasRight ? widest(maxRight) + 10 : 6;
  const top = 6, bottom = 18;
  const plotW = width - left - right, plotH = height - top - bottom;
  ctx.fillStyle = cssVar("--muted");
  ctx.strokeStyle = cssVar("--line");
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const y = top + plotH - (plotH * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y) + 0.5);
    ctx.lineTo(left + plotW, Math.round(y) + 0.5);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(labels(maxLeft)[i], left - 6, y);
    if (hasRight) {
      ctx.textAlign = "left";
      ctx.fillText(labels(maxRight)[i], left + plotW + 6, y);
    }
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText(`${Math.round(span / 60)} min`, left, height - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", left + plotW, height - 4);
  for (const s of series) {
    const max = s.right ? maxRight : maxLeft;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    const offset = span - s.values.length;
    s.values.forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      const x = left + (plotW * (offset + i)) / (span - 1);
      const y = top + plotH - (plotH * v) / max;
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    });
    ctx.stroke();
  }
}

function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawCharts() {
  const span = Math.min(HISTORY, Math.max(MIN_WINDOW, points.length));
  const pick = (f) => points.map(f);
  const connections = [{ values: pick((p) => p.connections), color: cssVar("--in") }];
  drawChart($("chart-connections"), connections, span);
  drawChart($("chart-rates"), [
    { values: pick((p) => p.published_per_s), color: cssVar("--in"), right: true },
    { values: pick((p) => p.delivered_per_s), color: cssVar("--out") },
  ], span);
  drawChart($("chart-latency"), [
    { values: pick((p) => p.p50_ms), color: cssVar("--p50") },
    { values: pick((p) => p.p90_ms), color: cssVar("--p90") },
    { values: pick((p) => p.p99_ms), color: cssVar("--p99") },
  ], span);
}

// The cards: rates averaged over the last few seconds, latency from the latest second
// in which a delivery was timed (none in a quiet second).
function recentRates() {
  const recent = points.slice(-RATE_WINDOW);
  const mean = (f) => recent.length ? recent.reduce((sum, p) => sum + f(p), 0) / recent.length : 0;
  return { in: mean((p) => p.published_per_s), out: mean((p) => p.delivered_per_s) };
}

function recentLatency() {
  for (let i = points.length - 1; i >= Math.max(0, points.length - 10); i -= 1) {
    if (points[i].p50_ms !== null) return points[i];
  }
  return null;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    td.title = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function fillTable(id, rows) {
  const body = $(id);
  body.replaceChildren(...rows);
}

function showState(state) {
  const rates = recentRates();
  const latency = recentLatency();
  $("connections").textContent = num(state.connections);
  $("opened").textContent = num(state.totals.connections_opened);
  $("closed").textContent = num(state.totals.connections_closed);
  $("published").textContent = num(state.totals.published);
  $("delivered").textContent = num(state.totals.delivered);
  $("rate-in").textContent = num(rates.in);
  $("rate-out").textContent = num(rates.out);
  $("latency").textContent = latency ? `${ms(latency.p50_ms)} / ${ms(latency.p99_ms)}` : "-";
  const kinds = Object.entries(state.channels);
  $("channels").textContent = num(kinds.reduce((sum, [, n]) => sum + n, 0));
  $("channel-kinds").textContent = kinds.filter(([, n]) => n > 0)
    .map(([kind, n]) => `${kind} ${num(n)}`).join(", ") || "none occupied";
  $("queued").textContent = bytes(state.send_queue_bytes);
  $("slow").textContent = num(state.totals.slow_client_closes);
  $("workers").textContent = `${state.workers.alive}/${state.workers.configured} workers`;
  fillTable("busiest", state.busiest.map((c) => row([
    [c.channel], [c.app], [num(c.subscribers), "num"],
  ])));
  fillTable("recent", state.recent.slice(0, RECENT_ROWS).map((e) => row([
    [new Date(e.time * 1000).toLocaleTimeString()],
    [e.more ? `${e.channel} +${e.more}` : e.channel],
    [e.name],
    [num(e.size), "num"],
  ])));
  showCertificate(state.certificate);
  showCluster(state.cluster);
}

// Broker kind redis only: this node and the others with a live heartbeat.
function showCluster(cluster) {
  $("cluster-panel").hidden = !cluster;
  if (!cluster) return;
  $("cluster-count").textContent = `${cluster.nodes.length} live, this one ${cluster.node_id}`;
  const now = Date.now() / 1000;
  fillTable("cluster-nodes", cluster.nodes.map((n) => row([
    [n.node_num === cluster.node_num ? `${n.node_id} (this one)` : n.node_id],
    [n.host],
    [String(n.pid), "num"],
    [String(n.workers), "num"],
    [n.last_seen ? `${Math.max(0, now - n.last_seen).toFixed(1)} s ago` : "-", "num"],
  ])));
}

function showCertificate(cert) {
  const pill = $("cert");
  const list = $("certificate");
  const entries = [];
  if (!cert) {
    pill.textContent = "TLS off";
    pill.className = "pill warn";
    entries.push(["TLS", "off"]);
  } else {
    const left = cert.expires_in_s;
    pill.textContent = cert.valid ? `certificate: ${duration(left)} left` : "certificate invalid";
    pill.className = "pill" + (!cert.valid ? " bad" : left < 14 * 86400 ? " warn" : "");
    entries.push(["Status", cert.valid ? "valid" : "NOT VALID"]);
    entries.push(["Expires", cert.not_after ? new Date(cert.not_after).toLocaleString() : "-"]);
    if (left !== null) entries.push(["Left", duration(left)]);
    entries.push(["Subject", cert.subject || "-"]);
    entries.push(["File", cert.path]);
    if (cert.error) entries.push(["Error", cert.error]);
  }
  list.replaceChildren(...entries.flatMap(([term, detail]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = detail;
    return [dt, dd];
  }));
}

function addPoint(point) {
  if (!point) return;
  points.push(point);
  if (points.length > HISTORY) points.splice(0, points.length - HISTORY);
}

function connect() {
  const url = "/dashboard/events" + (token ? `?token=${encodeURIComponent(token)}` : "");
  const source = new EventSource(url);
  const live = $("live");
  source.addEventListener("hello", (message) => {
    const data = JSON.parse(message.data);
    points.length = 0;
    data.history.forEach(addPoint);
    showState(data.state);
    drawCharts();
    live.textContent = "live";
    live.className = "pill";
  });
  source.addEventListener("tick", (message) => {
    const data = JSON.parse(message.data);
    addPoint(data.point);
    showState(data.state);
    drawCharts();
  });
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "pill off";
  };
}

window.addEventListener("resize", drawCharts);
$("console-link").href = "/dashboard/console" + (token ? `?token=${encodeURIComponent(token)}` : "");
connect();
