// Sidecar's debug console: a live stream of items from /dashboard/console/events (server-sent
// events), newest first, and a form that publishes a test event. Channel names, event names
// and payloads come from clients and apps: only ever set as text, never as HTML.
"use strict";

const MAX_ROWS = 500; // rows kept on the page; older ones are removed
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const count = new Intl.NumberFormat("en-US");
let source = null;
let paused = false;
let held = []; // items received while paused, shown on resume (bounded like the page)
let shown = 0;
let dropped = 0;

function withToken(path) {
  return token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(seconds) {
  const d = new Date(seconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

const oneDecimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function bytes(n) {
  if (n < 1024) return `${count.format(n)} B`;
  if (n < 1024 * 1024) return `${oneDecimal.format(n / 1024)} KiB`;
  return `${oneDecimal.format(n / 1024 / 1024)} MiB`;
}

// The data as the subscribers get it: pretty-printed when it is whole JSON, as is otherwise.
function payloadText(item) {
  if (!item.truncated) {
    try { return JSON.stringify(JSON.parse(item.data), null, 2); } catch (e) { /* text */ }
  }
  return item.data;
}

const SOURCES = { unix: "Unix socket", api: "signed API", client: "client event", console: "console" };
const CLOSES = { 1000: "normal", 1001: "going away", 1006: "no close frame", 4200: "reconnect now" };

function details(item) {
  const cell = el("td", "details");
  const meta = (text) => cell.appendChild(el("span", "meta", text));
  switch (item.kind) {
    case "event": {
      cell.appendChild(el("span", "name", item.event));
      cell.appendChild(el("span", `source ${item.source}`, SOURCES[item.source] || item.source));
      meta(bytes(item.size) + (item.truncated ? `, first ${bytes(previewBytes)} shown` : "")
        + (item.socket_id ? ` · from ${item.socket_id}` : "")
        + (item.user_id ? ` · user ${item.user_id}` : ""));
      cell.appendChild(el("pre", "payload", payloadText(item) + (item.truncated ? " …" : "")));
      break;
    }
    case "connected":
      cell.appendChild(el("span", "name", item.socket_id));
      break;
    case "disconnected":
      cell.appendChild(el("span", "name", item.socket_id));
      meta(`code ${item.code}${CLOSES[item.code] ? ` (${CLOSES[item.code]})` : ""}`
        + (item.subscriptions ? ` · left ${item.subscriptions} channel${item.subscriptions > 1 ? "s" : ""}` : ""));
      break;
    case "subscribed":
    case "unsubscribed":
      cell.appendChild(el("span", "name", item.socket_id));
      break;
    case "member_added":
    case "member_removed":
      cell.appendChild(el("span", "name", `user ${item.user_id}`));
      if (item.socket_id) meta(item.socket_id);
      break;
    default:
      break;
  }
  if (item.worker !== undefined) meta(`worker ${item.worker}`);
  if (item.app && appCount > 1) meta(`app ${item.app}`);
  return cell;
}

const LABELS = {
  event: "Event", connected: "Connection", disconnected: "Disconnection", subscribed: "Subscribed",
  unsubscribed: "Unsubscribed", occupied: "Occupied", vacated: "Vacated",
  member_added: "Member added", member_removed: "Member removed",
};

function channelsOf(item) {
  return item.channels || (item.channel ? [item.channel] : []);
}

function row(item) {
  const tr = el("tr", "fresh");
  if (item.kind === "dropped") {
    tr.className = "dropped";
    const td = el("td", null, `${count.format(item.count)} items dropped (over ${rate} a second, or this page fell behind)`);
    td.colSpan = 4;
    tr.appendChild(td);
    return tr;
  }
  tr.dataset.kind = item.kind;
  tr.dataset.channels = JSON.stringify(channelsOf(item));
  tr.appendChild(el("td", "time", clock(item.t)));
  const kind = el("td", "kind");
  kind.appendChild(el("span", `badge ${item.kind}`, LABELS[item.kind] || item.kind));
  tr.appendChild(kind);
  const channels = channelsOf(item);
  const channel = el("td", "channel", channels.join(", "));
  channel.title = channels.join(", ");
  tr.appendChild(channel);
  tr.appendChild(details(item));
  return tr;
}

let rate = 100;
let previewBytes = 1024;
let appCount = 1;

// Newest first, by the time each happened: a worker's items come up to a twentieth of a
// second after the supervisor's own, so a row may belong a few rows down.
const LOOK_BACK = 50;
let lastTime = 0;

function place(log, tr, time) {
  tr.dataset.t = time;
  let before = log.firstElementChild;
  for (let i = 0; before && i < LOOK_BACK && Number(before.dataset.t) > time; i += 1) {
    before = before.nextElementSibling;
  }
  log.insertBefore(tr, before);
}

function show(items) {
  const log = $("log");
  for (const item of items) {
    if (item.kind === "dropped") dropped += item.count; else shown += 1;
    if (item.t) lastTime = Math.max(lastTime, item.t);
    place(log, row(item), item.t || lastTime);
  }
  while (log.rows.length > MAX_ROWS) log.deleteRow(log.rows.length - 1);
  $("empty").hidden = log.rows.length > 0;
  updateCounts();
}

function updateCounts() {
  const parts = [`${count.format(shown)} shown`];
  if (dropped) parts.push(`${count.format(dropped)} dropped`);
  if (paused && held.length) parts.push(`${count.format(held.length)} held while paused`);
  $("counts").textContent = parts.join(" · ");
}

function receive(items) {
  if (paused) {
    held.push(...items);
    if (held.length > MAX_ROWS) held.splice(0, held.length - MAX_ROWS);
    updateCounts();
    return;
  }
  show(items);
}

function connect() {
  if (source) source.close();
  const filter = $("filter").value.trim();
  const path = "/dashboard/console/events" + (filter ? `?channel=${encodeURIComponent(filter)}` : "");
  source = new EventSource(withToken(path));
  const live = $("live");
  source.addEventListener("hello", (message) => {
    const hello = JSON.parse(message.data);
    rate = hello.rate;
    previewBytes = hello.preview_bytes;
    $("rate").textContent = hello.rate;
    $("preview-bytes").textContent = count.format(hello.preview_bytes);
    $("workers").textContent = hello.workers > 1 ? `${hello.workers} workers` : "1 process";
    showApps(hello.apps);
    live.textContent = "live";
    live.className = "pill";
  });
  source.addEventListener("items", (message) => receive(JSON.parse(message.data)));
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "pill off";
  };
}

function showApps(apps) {
  appCount = apps.length;
  const select = $("app");
  if (select.options.length === apps.length) return;
  select.replaceChildren(...apps.map((id) => el("option", null, id)));
  $("app-row").hidden = apps.length < 2;
}

// Rows already shown follow the filter at once; the stream is asked again with it, so that
// the rate cap applies to what matches.
function applyFilter() {
  const filter = $("filter").value.trim();
  for (const tr of $("log").rows) {
    if (!tr.dataset.channels) continue;
    const channels = JSON.parse(tr.dataset.channels);
    tr.hidden = filter !== "" && !channels.some((c) => c.includes(filter));
  }
  connect();
}

let filterTimer = null;
$("filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(applyFilter, 300);
});

$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").classList.toggle("on", paused);
  if (!paused && held.length) {
    const items = held;
    held = [];
    show(items);
  }
  updateCounts();
});

$("clear").addEventListener("click", () => {
  $("log").replaceChildren();
  shown = 0;
  dropped = 0;
  held = [];
  $("empty").hidden = false;
  updateCounts();
});

$("send").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const result = $("send-result");
  let data;
  try {
    data = JSON.parse($("data").value);
  } catch (e) {
    result.textContent = `Data is not valid JSON: ${e.message}`;
    result.className = "bad";
    return;
  }
  const body = { channel: $("channel").value.trim(), event: $("event").value.trim(), data };
  if (appCount > 1) body.app_id = $("app").value;
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  result.textContent = "sending…";
  result.className = "muted";
  try {
    const response = await fetch("/dashboard/console/publish", {
      method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin",
    });
    const answer = await response.json();
    result.textContent = response.ok ? `Sent to ${answer.channels.join(", ")}` : answer.error;
    result.className = response.ok ? "ok" : "bad";
  } catch (e) {
    result.textContent = `Not sent: ${e.message}`;
    result.className = "bad";
  }
});

$("dashboard-link").href = withToken("/dashboard");
connect();
