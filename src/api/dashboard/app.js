// The live dashboard: one WebSocket to /v1/ws/metrics (the key goes in the subscribe message,
// as browsers can't set headers on a WebSocket) and, once a minute, the last hour's series
// from /v1/analytics/timeseries. The key stays in this tab's sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
let socket = null;
let seriesTimer = null;

function show(id, text) { $(id).textContent = text; }

function fail(message) { show("error", message); }

function connect(key, client) {
  if (socket) socket.close();
  clearInterval(seriesTimer);
  fail("");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/v1/ws/metrics`);
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "subscribe", api_key: key, client_id: client || null }));
    show("status", "live");
    $("status").className = "";
  };
  socket.onclose = (e) => {
    show("status", "disconnected");
    $("status").className = "off";
    if (e.reason) fail(e.reason);
  };
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "error") { fail(msg.message); return; }
    if (msg.type === "metrics") render(msg);
  };
  const loadSeries = () => series(key, client);
  loadSeries();
  seriesTimer = setInterval(loadSeries, 60000);
}

function render(m) {
  show("rate", m.events_per_second.toFixed(1));
  const l = m.latency_ms;
  show("latency", l.p50 === null ? "–" : `${l.p50} / ${l.p95} / ${l.p99}`);
  const d = m.deliveries;
  show("deliveries", `${d.pending} / ${d.processing} / ${d.failed}`);
  show("queue", m.write_queue ? `${m.write_queue.jobs}` : "–");
  const rows = $("types");
  rows.replaceChildren(...m.by_type.map((t) => {
    const tr = document.createElement("tr");
    for (const text of [t.event_type, String(t.count)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

async function series(key, client) {
  const query = new URLSearchParams({ interval: "minute" });
  if (client) query.set("client_id", client);
  const r = await fetch(`/v1/analytics/timeseries?${query}`, { headers: { "X-API-Key": key } });
  const body = await r.json();
  if (!r.ok) { fail(body.message); return; }
  draw(body.buckets.map((b) => b.count));
}

function draw(counts) {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const max = Math.max(1, ...counts);
  const w = canvas.width / Math.max(1, counts.length);
  g.fillStyle = "#4f7cff";
  counts.forEach((c, i) => {
    const h = (c / max) * (canvas.height - 20);
    g.fillRect(i * w + 1, canvas.height - h, w - 2, h);
  });
  g.fillStyle = "#5b6475";
  g.fillText(`max ${max}/min`, 4, 12);
}

$("connect").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  sessionStorage.setItem("annals-key", key);
  connect(key, $("client").value.trim());
});

const saved = sessionStorage.getItem("annals-key");
if (saved) { $("key").value = saved; connect(saved, ""); }
