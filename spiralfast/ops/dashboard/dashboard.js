// spiralfast dashboard: one WebSocket to this node's /live feed, one snapshot a second.
// No polling, no third-party code; every value is written with textContent.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "spiralfast-token:" + location.host;
  const $ = (id) => document.getElementById(id);
  let ws = null;
  let retry = 1000;
  let awaitingToken = false;
  let stopped = false;

  // -- formatting -------------------------------------------------------------------
  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (v >= 100) return Math.round(v).toString();
    return (Math.round(v * 10) / 10).toString();
  }
  function fmtBytes(v) {
    if (v === null || v === undefined) return "–";
    const u = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : Math.round(v)) + " " + u[i];
  }
  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.floor(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }
  function fmtTime(ts) {
    if (!ts) return "";
    const d = new Date(typeof ts === "number" ? ts * 1000 : ts);
    return isNaN(d) ? String(ts) : d.toLocaleTimeString();
  }
  function short(id) { id = String(id); return id.length > 12 ? id.slice(0, 11) + "…" : id; }

  // -- node states ------------------------------------------------------------------
  // Each NodeStatus value and what it means.  The node's feed also sends every state it
  // has with its kind (live / suspect / down / unknown), so a state added to the node
  // later is still classified and listed in the legend, with the fallback style.
  const STATES = {
    active: ["live", "member, heard from; its links are live"],
    initializing: ["live", "member still starting up; reachable"],
    dormant: ["live", "member, idle but reachable"],
    ritual_mode: ["live", "member in ritual mode; reachable"],
    suspected: ["suspect", "its side closed its link and no route hears it: probed, removed within seconds unless it answers; its links dashed"],
    suspect: ["suspect", "its side closed its link and no route hears it: probed, removed within seconds unless it answers; its links dashed"],
    disconnected: ["down", "link lost and not heard since; no link drawn; removed when silent for 3 heartbeats"],
  };
  const KIND_TEXT = {
    live: "member, reachable; its links are live",
    suspect: "not heard from: being checked before removal; its links dashed",
    down: "not reachable; no link drawn",
    unknown: "a state this page does not know; no link drawn",
  };
  const KINDS = ["live", "suspect", "down", "unknown"];
  // a node's one state: "suspected" while suspected (its status is then disconnected)
  function stateOf(n) {
    if (n.state !== undefined && n.state !== null) return String(n.state);
    if (n.suspect === true) return "suspected";
    return n.status === undefined || n.status === null ? "unknown" : String(n.status);
  }
  let serverKinds = {};
  function kindOf(status) {
    const k = serverKinds[status] || (STATES[status] ? STATES[status][0] : "unknown");
    return KINDS.includes(k) ? k : "unknown";
  }
  // a CSS class for a state: its own when it is a plain word, else the fallback
  function stateClass(status) {
    const st = String(status === undefined || status === null ? "unknown" : status);
    const own = /^[A-Za-z0-9_-]{1,40}$/.test(st) && (STATES[st] || serverKinds[st]) ? "st-" + st : "st-unknown";
    return own + " kind-" + kindOf(st);
  }

  // -- DOM helpers ------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) { if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]); }
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function row(cells, attrs) {
    const tr = el("tr", attrs);
    for (const c of cells) {
      const td = el("td", c.cls ? { class: c.cls, title: c.title } : { title: c.title }, c.text === undefined ? c : c.text);
      tr.appendChild(td);
    }
    return tr;
  }
  function fill(tbody, rows) { tbody.replaceChildren(...rows); }
  function setText(id, v) { const e = $(id); if (e.textContent !== String(v)) e.textContent = v; }

  // -- rendering --------------------------------------------------------------------
  function renderHeader(s) {
    setText("mesh-name", s.mesh_name || "");
    setText("node-id", s.node_id);
    const st = $("node-status");
    st.textContent = s.status; st.className = "badge " + s.status + " " + stateClass(s.status);
    setText("uptime", fmtDuration(s.uptime));
    document.title = "spiralfast · " + s.node_id;
  }

  function renderFlow(s) {
    const r = s.rates || {};
    setText("rate-in", fmtRate(r.in || 0));
    setText("rate-out", fmtRate(r.out || 0));
    setText("rate-fwd", fmtRate(r.forwarded || 0));
    const c = s.counters || {};
    setText("total-in", (c.events_in || 0).toLocaleString());
    setText("total-out", (c.events_out || 0).toLocaleString());
    const h = s.health || {};
    for (const [id, k] of [["h-dropped", "dropped"], ["h-lost", "lost"], ["h-handler", "handler_errors"], ["h-auth", "auth_failures"]]) {
      setText(id, (h[k] || 0).toLocaleString());
      $(id).classList.toggle("warn", (h[k] || 0) > 0);
    }
    $("rate-in").dataset.value = r.in || 0;
    $("rate-out").dataset.value = r.out || 0;
    // chart: last 60 s, x by time so gaps show as gaps in time
    const hist = s.history || [];
    const W = 600, H = 160, now = s.t || Date.now() / 1000;
    let max = 10;
    for (const p of hist) max = Math.max(max, p[1], p[2]);
    max *= 1.15;
    const x = (t) => Math.max(0, W - (now - t) / 60 * W);
    const y = (v) => H - (v / max) * (H - 14);
    const path = (i) => hist.map((p, k) => (k ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[i]).toFixed(1)).join("");
    $("chart-in").setAttribute("d", path(1));
    $("chart-out").setAttribute("d", path(2));
    const grid = $("chart-grid");
    grid.replaceChildren();
    for (const f of [0.5, 1]) {
      const v = max * f / 1.15, yy = y(v);
      grid.appendChild(svg("line", { x1: 0, x2: W, y1: yy, y2: yy, class: "grid" }));
      const t = svg("text", { x: 4, y: yy - 3 }); t.textContent = fmtRate(v) + "/s"; grid.appendChild(t);
    }
    const types = Object.entries(s.by_type || {});
    fill($("by-type"), types.length ? types.map(([t, v]) => row([t, { text: fmtRate(v), cls: "r" }], { "data-type": t }))
      : [row([{ text: "no events", cls: "muted" }, ""])]);
  }

  function renderTopology(s) {
    const topo = s.topology || { nodes: [], links: [] };
    const status = Object.assign({}, topo.status || {}, topo.state || {});
    for (const n of s.nodes || []) status[n.node_id] = stateOf(n);
    const ids = topo.nodes.slice().sort();
    const W = 400, H = 320, cx = W / 2, cy = H / 2;
    const R = ids.length > 1 ? Math.min(W, H) / 2 - 34 : 0;
    const pos = {};
    ids.forEach((id, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(ids.length, 1);
      pos[id] = [cx + R * Math.cos(a), cy + R * Math.sin(a)];
    });
    const live = (id) => kindOf(status[id]) === "live";
    // live links only between two live nodes; a link with a suspected end is drawn
    // dashed (data-suspect-link); a link to a down or unknown node is not drawn at all
    const line = (l, kind) => {
      const [a, b] = l[0] < l[1] ? l : [l[1], l[0]];
      const attrs = { x1: pos[a][0], y1: pos[a][1], x2: pos[b][0], y2: pos[b][1] };
      attrs[kind === "live" ? "data-link" : "data-suspect-link"] = a + "|" + b;
      const own = a === topo.local || b === topo.local ? " own" : "";
      attrs.class = kind + own;
      const e = svg("line", attrs);
      const title = svg("title", {});
      title.textContent = a + " – " + b + (kind === "live" ? "" : " (suspect: " + (live(a) ? b : a) + " is " + (live(a) ? status[b] : status[a]) + ")");
      e.appendChild(title);
      return e;
    };
    const drawn = (l) => pos[l[0]] && pos[l[1]];
    const liveLinks = (topo.links || []).filter((l) => drawn(l) && live(l[0]) && live(l[1]));
    const suspectLinks = (topo.suspect_links || []).filter((l) => drawn(l)
      && [l[0], l[1]].every((id) => ["live", "suspect"].includes(kindOf(status[id]))));
    $("topo-links").replaceChildren(...suspectLinks.map((l) => line(l, "suspect")), ...liveLinks.map((l) => line(l, "live")));
    const r = ids.length > 24 ? 8 : 18;
    $("topo-nodes").replaceChildren(...ids.map((id) => {
      const st = status[id] === undefined ? "unknown" : String(status[id]);
      const g = svg("g", { "data-node-id": id, "data-state": st, "data-kind": kindOf(st),
        class: "node " + stateClass(st) + (id === topo.local ? " local" : "") });
      g.appendChild(svg("circle", { cx: pos[id][0], cy: pos[id][1], r: r }));
      const t = svg("text", { x: pos[id][0], y: pos[id][1] + r + 13 });
      t.textContent = short(id);
      g.appendChild(t);
      if (kindOf(st) !== "live") {
        const t2 = svg("text", { x: pos[id][0], y: pos[id][1] + r + 25, class: "state-label" });
        t2.textContent = st;
        g.appendChild(t2);
      }
      const title = svg("title", {}); title.textContent = id + " (" + st + ")";
      g.appendChild(title);
      return g;
    }));
    const notLive = ids.filter((id) => !live(id)).length;
    setText("topo-summary", ids.length + " nodes" + (notLive ? " (" + notLive + " not live)" : "") + ", "
      + liveLinks.length + " live links" + (suspectLinks.length ? ", " + suspectLinks.length + " suspect" : ""));
  }

  function renderLegend(s) {
    // every state the node has, plus any state a node is in right now, is in the legend
    const ul = $("legend-states");
    const have = new Set([...ul.children].map((li) => li.dataset.state));
    const wanted = Object.keys(s.node_states || {});
    for (const n of s.nodes || []) wanted.push(stateOf(n));
    const fallback = ul.querySelector('li[data-state="unknown"]');
    for (const st of wanted) {
      if (have.has(st)) continue;
      have.add(st);
      const kind = kindOf(st);
      const li = el("li", { "data-state": st, "data-kind": kind });
      li.appendChild(el("span", { class: "swatch " + stateClass(st) }));
      li.appendChild(el("b", null, st));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", { class: "muted" }, STATES[st] ? STATES[st][1] : KIND_TEXT[kind]));
      ul.insertBefore(li, fallback);
    }
    for (const li of ul.children) {  // the node's own word on a state's kind wins
      const st = li.dataset.state;
      if (st === "unknown" || !serverKinds[st] || li.dataset.kind === serverKinds[st]) continue;
      li.dataset.kind = kindOf(st);
      li.querySelector(".swatch").setAttribute("class", "swatch " + stateClass(st));
    }
  }

  function renderNodes(s) {
    const nodes = (s.nodes || []).slice().sort((a, b) => (a.node_id < b.node_id ? -1 : 1));
    const notLive = nodes.filter((n) => kindOf(stateOf(n)) !== "live").length;
    setText("nodes-count", nodes.length + " known" + (notLive ? ", " + notLive + " not live" : ""));
    fill($("nodes"), nodes.map((n) => {
      const st = stateOf(n);
      const tr = row([
        { text: short(n.node_id) + (n.local ? " ★" : ""), title: n.node_id },
        n.name || "",
        "",
        { text: (n.capabilities || []).join(", "), title: (n.capabilities || []).join(", ") },
        { text: (n.local ? "now" : (n.seconds_since_heartbeat || 0).toFixed(1) + " s ago"), cls: "r" },
      ], { "data-row-id": n.node_id, "data-state": st, "data-kind": kindOf(st), class: "row-" + kindOf(st) });
      const td = tr.children[2];
      td.className = "status-cell";
      td.title = st + (n.status !== undefined && String(n.status) !== st ? " (status " + n.status + ")" : "") + ": "
        + (STATES[st] ? STATES[st][1] : KIND_TEXT[kindOf(st)]);
      td.appendChild(el("span", { class: "state " + stateClass(st) }, st));
      return tr;
    }));
  }

  function renderLinks(s) {
    const links = s.links || [];
    fill($("links"), links.length ? links.map((l) => row([
      { text: short(l.peer), title: l.peer + " " + (l.endpoint || "") },
      l.transport || "",
      l.state || "",
      { text: l.rtt_ms === null || l.rtt_ms === undefined ? "–" : l.rtt_ms.toFixed(2) + " ms", cls: "r" },
      { text: fmtBytes(l.bytes_out_s) + "/s", cls: "r", title: fmtBytes(l.bytes_out) + " total" },
      { text: l.bytes_in_s === null || l.bytes_in_s === undefined ? "–" : fmtBytes(l.bytes_in_s) + "/s", cls: "r" },
      { text: fmtRate(l.frames_out_s), cls: "r" },
      { text: String(l.dropped_frames || 0), cls: "r" },
      { text: l.gaps === null || l.gaps === undefined ? "–" : String(l.gaps), cls: "r" },
    ], { "data-peer": l.peer })) : [row([{ text: "no links", cls: "muted" }])]);
  }

  function renderSync(s) {
    const y = s.sync || {};
    setText("sync-status", y.sync_status || "–");
    $("sync-status").className = y.sync_status === "synced" ? "st-active"
      : (y.sync_status === "error" || y.sync_status === "conflict" ? "st-offline" : "st-degraded");
    setText("sync-version", y.state_version === undefined ? "–" : y.state_version);
    setText("sync-total", y.total_items === undefined ? "–" : y.total_items);
    setText("sync-last", y.last_sync ? fmtTime(y.last_sync) : "never");
    fill($("sync-keys"), Object.entries(y.keys || {}).map(([c, n]) => row([c, { text: String(n), cls: "r" }])));
  }

  function renderServices(s) {
    const tasks = s.tasks && typeof s.tasks === "object" ? s.tasks : {};
    const pers = s.persistence && typeof s.persistence === "object" ? s.persistence : null;
    const rows = [];
    const num = (v) => (v === null || v === undefined ? "–" : String(v));
    for (const [t, o] of Object.entries(tasks.offered || {})) {
      rows.push(row([t, "serves", { text: num(o.running), cls: "r" }, { text: num(o.done), cls: "r" },
        { text: num(o.failed), cls: "r" }, { text: o.p99_ms === null || o.p99_ms === undefined ? "–" : o.p99_ms.toFixed(1), cls: "r" }],
        { "data-task": t }));
    }
    for (const [t, o] of Object.entries(tasks.submitted || {})) {
      rows.push(row([t, "submits", { text: num((o.in_flight || 0) + (o.waiting || 0)), cls: "r" }, { text: num(o.done), cls: "r" },
        { text: num(o.failed), cls: "r" }, { text: o.p99_ms === null || o.p99_ms === undefined ? "–" : o.p99_ms.toFixed(1), cls: "r" }],
        { "data-task": t }));
    }
    const card = $("services-card");
    card.hidden = !rows.length && !pers;
    if (card.hidden) return;
    fill($("tasks"), rows);
    $("tasks").closest("table").hidden = !rows.length;
    const dl = $("persistence");
    dl.replaceChildren();
    for (const [k, v] of Object.entries(pers || {})) {
      if (v !== null && typeof v === "object") continue;
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, String(v)));
    }
  }

  function renderRecent(s) {
    const ev = s.recent || [];
    fill($("recent"), ev.length ? ev.map((e) => row([
      fmtTime(e.timestamp), e.type, { text: short(e.source_node), title: e.source_node }, { text: e.data, title: e.data },
    ])) : [row([{ text: "no events yet", cls: "muted" }])]);
  }

  function render(s) {
    serverKinds = s.node_states && typeof s.node_states === "object" ? s.node_states : {};
    renderHeader(s); renderFlow(s); renderLegend(s); renderTopology(s); renderNodes(s); renderLinks(s); renderSync(s);
    renderServices(s); renderRecent(s);
    document.body.dataset.updated = String(s.t);
  }

  // -- connection -------------------------------------------------------------------
  function setConn(on, text) {
    const c = $("conn");
    c.className = "conn " + (on ? "on" : "off");
    c.textContent = text;
  }

  function askToken(wrong) {
    awaitingToken = true;
    $("token-error").hidden = !wrong;
    const d = $("token-dialog");
    if (!d.open) d.showModal();
    $("token-input").focus();
  }

  function sendToken(tok) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ token: tok }));
  }

  function connect() {
    if (stopped) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/live");
    ws.onopen = () => { setConn(true, "live"); retry = 1000; };
    ws.onmessage = (m) => {
      let s;
      try { s = JSON.parse(m.data); } catch (e) { return; }
      if (s.auth === "required") {
        const tok = sessionStorage.getItem(TOKEN_KEY);
        if (tok) sendToken(tok); else askToken(false);
        return;
      }
      if (s.error === "unauthorized") {
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(true);
        return;
      }
      if (s.error) { setConn(false, s.error); return; }
      render(s);
    };
    ws.onclose = () => {
      setConn(false, "reconnecting…");
      ws = null;
      if (awaitingToken) return; // reconnect once the user gave the token
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
    ws.onerror = () => {}; // onclose follows and reconnects
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const tok = $("token-input").value;
      if (!tok) return;
      sessionStorage.setItem(TOKEN_KEY, tok);
      $("token-input").value = "";
      $("token-dialog").close();
      awaitingToken = false;
      if (ws && ws.readyState === WebSocket.OPEN) sendToken(tok); else if (!ws) connect();
    });
    connect();
  });
  window.addEventListener("beforeunload", () => { stopped = true; if (ws) ws.close(); });
})();
