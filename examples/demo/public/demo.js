// The page of the Puma and Unicorn examples: pusher-js against the sidecar that served it.
// Everything seen is kept in window.demo too (the end-to-end tests read it).
"use strict";

const demo = (window.demo = {
  state: "starting",
  socketId: null,
  subscribed: {},
  subscriptionErrors: {},
  events: [],     // {channel, event, pid, n, text}
  big: [],        // the 1 MB events: {n, pid, length, sha256}
  members: [],    // user ids on presence-demo
  published: [],  // the app's answers to POST /publish: {pid, n, bytes, sha256, ms}
  publishErrors: [],
});

const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const port = Number(location.port || (location.protocol === "https:" ? 443 : 80));
const pusher = new Pusher(meta("sidecar-key"), {
  wsHost: location.hostname,
  wsPort: port,
  wssPort: port,
  forceTLS: location.protocol === "https:",
  enabledTransports: ["ws", "wss"],
  cluster: "sidecar",
  channelAuthorization: { endpoint: "/pusher/auth", transport: "ajax" },
});

pusher.connection.bind("state_change", ({ current }) => {
  demo.state = current;
  const state = document.getElementById("state");
  state.textContent = current;
  state.className = current;
  if (current === "connected") {
    demo.socketId = pusher.connection.socket_id;
    document.getElementById("socket-id").textContent = `(socket ${demo.socketId})`;
  }
});

function card(channel) {
  return document.getElementById(`card-${channel}`);
}

function log(channel, text) {
  const item = document.createElement("li");
  item.textContent = text;
  const list = card(channel).querySelector(".log");
  list.prepend(item);
  while (list.children.length > 8) list.lastChild.remove();
}

function watch(channel) {
  const subscription = pusher.subscribe(channel);
  const status = card(channel).querySelector(".status");
  subscription.bind("pusher:subscription_succeeded", () => {
    demo.subscribed[channel] = true;
    status.textContent = "subscribed";
    status.className = "status ok";
    if (channel.startsWith("presence-")) showMembers(subscription);
  });
  subscription.bind("pusher:subscription_error", (error) => {
    demo.subscriptionErrors[channel] = error.status || String(error);
    status.textContent = `refused (${error.status || error})`;
    status.className = "status failed";
  });
  return subscription;
}

async function sha256(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

watch("demo").bind("hello", (data) => {
  demo.events.push({ channel: "demo", event: "hello", pid: data.pid, n: data.n, text: data.text });
  log("demo", `hello #${data.n}: ${data.text} (pid ${data.pid})`);
});

watch("private-demo").bind("big", async (data) => {
  const seen = { n: data.n, pid: data.pid, length: data.blob.length, sha256: await sha256(data.blob) };
  demo.big.push(seen);
  demo.events.push({ channel: "private-demo", event: "big", pid: data.pid, n: data.n });
  log("private-demo", `big #${seen.n}: ${seen.length.toLocaleString("en")} bytes, sha256 ${seen.sha256.slice(0, 16)}… (pid ${seen.pid})`);
});

function showMembers(presence) {
  const ids = [];
  presence.members.each((member) => ids.push(member.id));
  demo.members = ids.sort();
  const list = document.getElementById("members");
  list.replaceChildren(...demo.members.map((id) => {
    const badge = document.createElement("span");
    badge.className = "member";
    badge.textContent = id === presence.members.me.id ? `${id} (you)` : id;
    return badge;
  }));
}

const presence = watch("presence-demo");
presence.bind("pusher:member_added", () => showMembers(presence));
presence.bind("pusher:member_removed", () => showMembers(presence));
presence.bind("note", (data) => {
  demo.events.push({ channel: "presence-demo", event: "note", n: data.n, text: data.text });
  log("presence-demo", `note #${data.n}: ${data.text}`);
});

function showWorkers() {
  const counts = new Map();
  for (const reply of demo.published) {
    const row = counts.get(reply.pid) || { count: 0, ms: 0 };
    counts.set(reply.pid, { count: row.count + 1, ms: reply.ms });
  }
  const body = document.querySelector("#workers tbody");
  body.replaceChildren(...[...counts].map(([pid, row]) => {
    const tr = document.createElement("tr");
    for (const text of [pid, row.count, row.ms]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

// One press: the app publishes three events from inside this request.
demo.publish = async function publish() {
  const response = await fetch("/publish", { method: "POST" });
  const reply = await response.json();
  if (!response.ok) {
    demo.publishErrors.push(reply);
    document.getElementById("last-publish").textContent = `refused: ${reply.error}`;
    return reply;
  }
  demo.published.push(reply);
  document.getElementById("last-publish").textContent =
    `#${reply.n} published by pid ${reply.pid} in ${reply.ms} ms (${reply.bytes.toLocaleString("en")} bytes, sha256 ${reply.sha256.slice(0, 16)}…)`;
  showWorkers();
  return reply;
};

// Several presses at once: with Unicorn they land on different workers.
demo.publishMany = (count) => Promise.all(Array.from({ length: count }, () => demo.publish()));

document.getElementById("publish").addEventListener("click", () => demo.publish());
