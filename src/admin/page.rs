//! The live cluster page: one self-contained HTML file (inline CSS and
//! script, no CDN) that polls the JSON views every second (polling, not a
//! stream: a page that streams never lets a headless browser's virtual
//! clock settle). State is in stable `data-*` attributes for tests:
//! `#members tr[data-node]`, `#status[data-polls]`, `#status[data-members]`,
//! `#cluster tr[data-member][data-state][data-answered]`,
//! `#types tr[data-type-total]`, `#lookup[data-owner][data-active]`,
//! `#listing tr[data-id][data-node]` and `#listing[data-next]`.
//!
//! The lookup and the listing follow the page's own query string, so a
//! link (or a test) opens one: `/?actor=Player&id=player-7` looks that
//! actor up, `/?list=Player&after=player-3` lists a page of active
//! `Player` ids; the forms on the page set them.

pub(super) const HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mesh cluster</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
canvas.map { border: 1px solid #999; image-rendering: pixelated; }
#status { color: #666; } .err { color: #b00; } .draining { color: #b60; font-weight: 600; }
form { margin: .5em 0; } input { font: inherit; } pre { background: #f6f6f6; padding: .5em; }
</style>
</head>
<body>
<h1>mesh: <span id="self">?</span></h1>
<p id="status" data-polls="0" data-members="0">loading…</p>
<h2>Members</h2>
<table><thead><tr><th>node</th><th>address</th><th>capabilities</th><th>actor types</th><th>protocol</th><th>connected since</th><th>found by</th><th>identity</th></tr></thead><tbody id="members"></tbody></table>
<h2>Cluster: every member's own figures (calls as its callers saw them, last 10 s)</h2>
<table><thead><tr><th>node</th><th>state</th><th>activations</th><th>by actor type</th><th>calls/s</th><th>errors/s</th></tr></thead><tbody id="cluster"></tbody></table>
<h2>Per actor type, cluster-wide</h2>
<table><thead><tr><th>actor type</th><th>activations</th><th>calls/s</th><th>errors/s</th><th>p50 ms</th><th>p99 ms</th></tr></thead><tbody id="types"></tbody></table>
<h2>Find an actor</h2>
<form method="get"><input name="actor" placeholder="actor type" required> <input name="id" placeholder="id" required> <button>look up</button></form>
<div id="lookup"></div>
<h2>Active actors of a type</h2>
<form method="get"><input name="list" placeholder="actor type" required> <button>list</button></form>
<div id="listing"></div>
<h2>Shards per capability (4096 cells, coloured by owner)</h2>
<div id="shards"></div>
<h2>Activations on this node</h2>
<table><thead><tr><th>actor type</th><th>capability</th><th>count</th></tr></thead><tbody id="activations"></tbody></table>
<script>
"use strict";
const colors = ["#4e79a7","#f28e2b","#e15759","#76b7b2","#59a14f","#edc948","#b07aa1","#ff9da7","#9c755f","#bab0ac"];
let polls = 0;
function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
function colorOf(nodes, n) { return colors[nodes.indexOf(n) % colors.length]; }
async function get(path) { const r = await fetch(path, {cache: "no-store"}); if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); }
async function poll() {
  const status = document.getElementById("status");
  try {
    const [members, shards, acts, cluster] = await Promise.all([get("/admin/members"), get("/admin/shards"), get("/admin/activations"), get("/admin/cluster")]);
    polls += 1;
    document.getElementById("self").textContent = members.self;
    const nodes = members.members.map(m => m.node);
    const tbody = document.getElementById("members");
    tbody.replaceChildren();
    for (const m of members.members) {
      const tr = document.createElement("tr");
      tr.dataset.node = m.node;
      tr.style.borderLeft = "6px solid " + colorOf(nodes, m.node);
      cell(tr, m.node + (m.node === members.self ? " (this node)" : ""));
      cell(tr, m.addr); cell(tr, m.capabilities.join(", "));
      cell(tr, m.actors ? m.actors.map(a => a.actor).join(", ") : "(not said)");
      cell(tr, "v" + m.protocol + (m.features && m.features.length ? " + " + m.features.join(", ") : ""));
      cell(tr, m.since_unix_ms ? new Date(m.since_unix_ms).toLocaleString() : (m.self ? "-" : "not connected"));
      cell(tr, m.discovered_by || "-"); cell(tr, m.identity || "-");
      tbody.appendChild(tr);
    }
    const sh = document.getElementById("shards");
    sh.replaceChildren();
    for (const c of shards.capabilities) {
      const p = document.createElement("p");
      p.dataset.capability = c.capability;
      p.textContent = c.capability + ": " + c.owners.map(o => o.node + " " + o.count).join(", ");
      // One 4x4 px cell per shard, 64 per row.
      const map = document.createElement("canvas");
      map.className = "map"; map.width = 256; map.height = 256;
      map.dataset.cells = String(c.map.length);
      const g = map.getContext("2d");
      c.map.forEach((owner, shard) => {
        g.fillStyle = colorOf(nodes, c.owners[owner].node);
        g.fillRect((shard % 64) * 4, Math.floor(shard / 64) * 4, 4, 4);
      });
      sh.appendChild(p); sh.appendChild(map);
    }
    const at = document.getElementById("activations");
    at.replaceChildren();
    for (const a of acts.by_type) {
      const tr = document.createElement("tr"); tr.dataset.type = a.type;
      cell(tr, a.type); cell(tr, a.capability); cell(tr, String(a.count));
      at.appendChild(tr);
    }
    showCluster(cluster);
    status.className = "";
    status.dataset.polls = String(polls);
    status.dataset.members = String(nodes.length);
    status.textContent = nodes.length + " members, " + acts.total + " activations here; updated " + new Date().toLocaleTimeString() + " (poll " + polls + ")";
  } catch (e) {
    status.className = "err";
    status.textContent = "cannot reach the node: " + e.message;
  }
}
function num(v) { return v === null || v === undefined ? "-" : String(v); }
function showCluster(c) {
  const tb = document.getElementById("cluster");
  tb.replaceChildren();
  for (const m of c.members) {
    const tr = document.createElement("tr");
    tr.dataset.member = m.node; tr.dataset.answered = String(m.answered);
    tr.dataset.state = m.answered ? m.state : "no answer";
    cell(tr, m.node + (m.self ? " (this node)" : ""));
    const st = document.createElement("td");
    st.textContent = m.answered ? m.state + (m.member ? "" : " (left the routing)") : "no answer: " + m.error;
    st.className = !m.answered ? "err" : (m.state !== "serving" ? "draining" : "");
    tr.appendChild(st);
    if (m.answered) {
      cell(tr, String(m.activations));
      cell(tr, m.types.map(t => t.actor + " " + t.activations).join(", "));
      cell(tr, String(m.calls.reduce((s, x) => s + x.calls_per_s, 0).toFixed(1)));
      cell(tr, String(m.calls.reduce((s, x) => s + x.errors_per_s, 0).toFixed(1)));
    }
    tb.appendChild(tr);
  }
  const ty = document.getElementById("types");
  ty.replaceChildren();
  for (const t of c.by_type) {
    const tr = document.createElement("tr"); tr.dataset.typeTotal = t.actor;
    cell(tr, t.actor); cell(tr, String(t.activations)); cell(tr, num(t.calls_per_s));
    cell(tr, num(t.errors_per_s)); cell(tr, num(t.p50_ms)); cell(tr, num(t.p99_ms));
    ty.appendChild(tr);
  }
}
function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : "-"; }
async function lookup(actor, id) {
  const box = document.getElementById("lookup");
  const r = await fetch("/admin/actor?actor=" + encodeURIComponent(actor) + "&id=" + encodeURIComponent(id), {cache: "no-store"});
  if (!r.ok) { box.className = "err"; box.textContent = await r.text(); return; }
  const a = await r.json();
  box.dataset.owner = a.owner; box.dataset.active = String(!!a.active);
  const lines = [
    a.actor + " " + JSON.stringify(a.id) + ": shard " + a.shard + ", owner " + a.owner + (a.answered ? "" : " (no answer: " + a.error + ")"),
    a.active ? "active since " + time(a.since_unix_ms) + ", last message " + time(a.last_message_unix_ms) + ", mailbox " + a.mailbox_depth : "not active",
    "timers: " + (a.timers && a.timers.length ? a.timers.map(t => t.key + (t.every_ms ? " every " + t.every_ms + " ms" : " once") + ", next " + time(t.next_unix_ms)).join("; ") : "none"),
    "stored: " + (a.stored ? (a.stored.error ? a.stored.error : "version " + a.stored.version + ", " + a.stored.size + " bytes") : "no state store"),
  ];
  if (a.stored && a.stored.state !== undefined) lines.push("state: " + JSON.stringify(a.stored.state));
  const pre = document.createElement("pre"); pre.textContent = lines.join("\n");
  box.replaceChildren(pre);
}
async function listing(actor, after) {
  const box = document.getElementById("listing");
  const r = await fetch("/admin/actors?actor=" + encodeURIComponent(actor) + "&after=" + encodeURIComponent(after || ""), {cache: "no-store"});
  if (!r.ok) { box.className = "err"; box.textContent = await r.text(); return; }
  const l = await r.json();
  const t = document.createElement("table");
  const tb = document.createElement("tbody"); t.appendChild(tb);
  for (const x of l.ids) {
    const tr = document.createElement("tr"); tr.dataset.id = x.id; tr.dataset.node = x.node;
    const td = document.createElement("td"); const a = document.createElement("a");
    a.href = "?actor=" + encodeURIComponent(actor) + "&id=" + encodeURIComponent(x.id); a.textContent = x.id;
    td.appendChild(a); tr.appendChild(td); cell(tr, x.node); tb.appendChild(tr);
  }
  box.dataset.next = l.next === null ? "" : l.next;
  box.dataset.count = String(l.ids.length);
  box.replaceChildren(t);
  for (const m of l.missing) { const p = document.createElement("p"); p.className = "err"; p.textContent = m.node + " did not answer: " + m.error; box.appendChild(p); }
  if (l.next !== null) {
    const a = document.createElement("a");
    a.href = "?list=" + encodeURIComponent(actor) + "&after=" + encodeURIComponent(l.next); a.textContent = "next page";
    box.appendChild(a);
  }
}
const q = new URLSearchParams(location.search);
if (q.get("actor") && q.get("id") !== null) lookup(q.get("actor"), q.get("id"));
if (q.get("list")) listing(q.get("list"), q.get("after"));
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"##;
