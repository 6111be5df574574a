//! The live cluster page: one self-contained HTML file (inline CSS and
//! script, no CDN) that polls the JSON views every second (polling, not a
//! stream: a page that streams never lets a headless browser's virtual
//! clock settle). State is in stable `data-*` attributes for tests:
//! `#members tr[data-node]`, `#status[data-polls]`, `#status[data-members]`.

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
#status { color: #666; } .err { color: #b00; }
</style>
</head>
<body>
<h1>mesh: <span id="self">?</span></h1>
<p id="status" data-polls="0" data-members="0">loading…</p>
<h2>Members</h2>
<table><thead><tr><th>node</th><th>address</th><th>capabilities</th><th>protocol</th><th>connected since</th><th>found by</th><th>identity</th></tr></thead><tbody id="members"></tbody></table>
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
    const [members, shards, acts] = await Promise.all([get("/admin/members"), get("/admin/shards"), get("/admin/activations")]);
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
    status.className = "";
    status.dataset.polls = String(polls);
    status.dataset.members = String(nodes.length);
    status.textContent = nodes.length + " members, " + acts.total + " activations here; updated " + new Date().toLocaleTimeString() + " (poll " + polls + ")";
  } catch (e) {
    status.className = "err";
    status.textContent = "cannot reach the node: " + e.message;
  }
}
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"##;
