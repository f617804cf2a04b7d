// leash's web UI: the egress map, a workload's panel, the rollout board and the alerts.
// It reads only the documented /v1 JSON. Every value from the server is tenant-controlled
// text (names come from DNS answers): the DOM is built with textContent and setAttribute,
// never from HTML strings. No inline script or style (the page runs under a strict CSP).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const VERDICTS = [
    { id: "allowed", text: "allowed", long: "Allowed by the applied policies and the proposal" },
    { id: "would-deny", text: "would be denied", long: "Allowed now, the proposal would deny it" },
    { id: "denied", text: "denied", long: "Denied by the applied policies (unexpected egress)" },
    { id: "drift", text: "DNS drift", long: "A name moved to an address the policies deny" },
  ];
  const VERDICT_TEXT = Object.fromEntries(VERDICTS.map((v) => [v.id, v.text]));
  const KIND_TEXT = {
    namespace: "namespace",
    workload: "workload",
    service: "Service",
    dns: "DNS",
    "api-server": "API server",
    nodes: "nodes",
    external: "external name",
    cidr: "external range",
  };

  const $ = (id) => document.getElementById(id);

  // One element, its attributes and its children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined) e.setAttribute(k, String(v));
    return e;
  }

  function status(text) {
    $("status").textContent = text;
  }

  async function getJSON(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (r.status === 401) {
      // The session ended (--ui-auth kube): log in again.
      window.location.assign("/login");
    }
    if (!r.ok) {
      const body = (await r.text()).trim();
      throw new Error(`${r.status}: ${body || r.statusText}`);
    }
    return r.json();
  }

  function when(t) {
    if (!t) return "";
    const d = new Date(t);
    return isNaN(d) ? String(t) : d.toISOString().replace(".000Z", "Z");
  }

  function duration(seconds) {
    const s = Number(seconds) || 0;
    if (s >= 86400) return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
    if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    if (s >= 60) return `${Math.floor(s / 60)}m`;
    return `${s}s`;
  }

  // "Kind/name" of a workload, and its namespace, to the panel's path.
  function workloadPath(namespace, workload) {
    const i = workload.indexOf("/");
    const kind = i < 0 ? workload : workload.slice(0, i);
    const name = i < 0 ? "" : workload.slice(i + 1);
    return `/v1/map/workloads/${encodeURIComponent(namespace)}/${encodeURIComponent(kind)}/${encodeURIComponent(name)}`;
  }

  // ---- Views (tabs) ----
  const views = { map: "view-map", rollout: "view-rollout", alerts: "view-alerts" };
  function show(view) {
    for (const [name, id] of Object.entries(views)) {
      $(id).hidden = name !== view;
      $(`tab-${name}`).setAttribute("aria-pressed", String(name === view));
    }
    if (view === "rollout") loadRollout();
    if (view === "alerts") loadAlerts();
  }
  for (const name of Object.keys(views)) $(`tab-${name}`).addEventListener("click", () => show(name));

  // ---- The legend: stroke AND text per verdict ----
  function legend() {
    const ul = $("legend");
    ul.replaceChildren();
    for (const v of VERDICTS) {
      const s = svg("svg", { width: 48, height: 12, "aria-hidden": "true", focusable: "false" });
      s.append(svg("line", { x1: 2, y1: 6, x2: 46, y2: 6, class: `edge v-${v.id}` }));
      ul.append(el("li", { "data-verdict": v.id }, s, el("strong", {}, v.text), `: ${v.long}`));
    }
  }

  // ---- The map ----
  const map = { namespace: null, namespaces: new Set(), view: null, focus: null };

  function filterQuery(withNamespace) {
    const p = new URLSearchParams();
    const since = $("f-since").value;
    const verdict = $("f-verdict").value;
    const q = $("f-search").value.trim();
    const ns = $("f-namespace").value;
    if (since && since !== "all") p.set("since", since);
    if (verdict && verdict !== "all") p.set("verdict", verdict);
    if (q) p.set("q", q);
    if (withNamespace && ns) p.set("namespace", ns);
    const s = p.toString();
    return s ? `?${s}` : "";
  }

  // Resolves once the browser has shown what was just drawn: a task queued from the next
  // frame's callback runs after that frame's style, layout and paint.
  function shown() {
    return new Promise((resolve) => {
      if (document.visibilityState === "hidden") resolve();
      else requestAnimationFrame(() => setTimeout(resolve, 0));
    });
  }

  // Asks for the map and draws it. `since`: when the user asked (the event's timeStamp), for
  // the timing below; else now.
  async function loadMap(since) {
    const path = map.namespace
      ? `/v1/map/namespaces/${encodeURIComponent(map.namespace)}${filterQuery(false)}`
      : `/v1/map${filterQuery(true)}`;
    status("Loading the map…");
    const root = $("map");
    root.setAttribute("aria-busy", "true");
    const asked = (map.asked = (map.asked || 0) + 1);
    const t0 = typeof since === "number" ? since : performance.now();
    try {
      const view = await getJSON(path);
      // An older answer arriving late must not replace a newer one.
      if (asked !== map.asked) return;
      map.view = view;
      remember(view);
      render(view);
      await shown();
      if (asked !== map.asked) return;
      root.setAttribute("data-query", path);
      // How long from the question to the map on screen (fetch, JSON, layout, DOM, style,
      // layout and paint), and when that was since the page's navigation (the browser tests
      // read them; README: Performance).
      const t1 = performance.now();
      root.setAttribute("data-ms", String(Math.round(t1 - t0)));
      root.setAttribute("data-drawn-at", String(Math.round(t1)));
      // The same as a User Timing measure, for `benches/ui.rs` and the browser's profiler.
      performance.measure(`leash:map ${path}`, { start: t0, end: t1 });
      status("");
    } catch (e) {
      if (asked === map.asked) status(`Cannot load the map: ${e.message}`);
    } finally {
      if (asked === map.asked) root.setAttribute("aria-busy", "false");
    }
  }

  // Namespaces seen, for the namespace filter.
  function remember(view) {
    let added = false;
    for (const n of view.nodes) {
      const ns = n.kind === "namespace" ? n.label : n.namespace;
      if (ns && !map.namespaces.has(ns)) {
        map.namespaces.add(ns);
        added = true;
      }
    }
    if (!added) return;
    const select = $("f-namespace");
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "All namespaces"));
    for (const ns of [...map.namespaces].sort()) select.append(el("option", { value: ns }, ns));
    select.value = current;
  }

  function nodeLabel(n) {
    const kind = KIND_TEXT[n.kind] || n.kind;
    const parts = [`${kind} ${n.label}`];
    if (n.kind === "workload" && n.namespace) parts[0] = `workload ${n.namespace}/${n.label}`;
    if (n.phase) parts.push(`phase ${n.phase}`);
    if (n.pods !== undefined) parts.push(`${n.pods} pod${n.pods === 1 ? "" : "s"}`);
    if (n.workloads !== undefined) parts.push(`${n.workloads} workload${n.workloads === 1 ? "" : "s"}`);
    if (n.addresses && n.addresses.length) parts.push(`addresses ${n.addresses.join(", ")}`);
    if (n.kind === "namespace" && n.workloads !== undefined) parts.push("press Enter to expand");
    if (n.kind === "workload" && n.pods !== undefined) parts.push("press Enter for its panel");
    return parts.join(", ");
  }

  // An edge's title (its tooltip): both ends, verdict, events, first and last seen, ports.
  function edgeTitle(e, byId) {
    const name = (id) => (byId.get(id) ? byId.get(id).label : id);
    const lines = [
      `${name(e.from)} → ${name(e.to)}`,
      `verdict: ${VERDICT_TEXT[e.verdict] || e.verdict}`,
      `events: ${e.events}`,
      `first seen: ${when(e.first_seen)}`,
      `last seen: ${when(e.last_seen)}`,
      `ports: ${e.ports.join(", ")}`,
    ];
    if (e.edges > 1) lines.push(`workload edges folded: ${e.edges}`);
    const title = document.createElementNS(SVG, "title");
    title.textContent = lines.join("\n");
    return title;
  }

  // Where each group sits: namespaces on a circle, destinations of other kinds beside it.
  function anchors(view, width, height) {
    const groups = [];
    for (const n of view.nodes) {
      const g = groupOf(n);
      if (!groups.includes(g)) groups.push(g);
    }
    // Namespaces on an inner circle, destinations (other than Services) on an outer one.
    const at = new Map();
    const inner = groups.filter((g) => g.startsWith("ns:"));
    const outer = groups.filter((g) => !g.startsWith("ns:"));
    const ring = (list, r, turn) =>
      list.forEach((g, i) => {
        const a = (2 * Math.PI * i) / Math.max(list.length, 1) - Math.PI / 2 + turn;
        at.set(g, list.length === 1 && r < 0.2 ? [width / 2, height / 2] : [width / 2 + r * width * Math.cos(a), height / 2 + r * height * Math.sin(a)]);
      });
    ring(inner, inner.length === 1 ? 0 : 0.18, 0);
    ring(outer, 0.36, Math.PI / Math.max(outer.length, 1));
    return at;
  }

  function groupOf(n) {
    if (n.kind === "workload") return n.parent || `ns:${n.namespace}`;
    if (n.kind === "namespace") return n.id;
    if (n.kind === "service" && n.namespace) return `ns:${n.namespace}`;
    return `dest:${n.kind}`;
  }

  // Views of more nodes than this are laid out in blocks: a force layout of hundreds of
  // nodes and thousands of edges costs hundreds of ms and draws a tangle.
  const LARGE = 150;

  // Small views: a force layout (d3-force) from positions around each group's anchor, run to
  // its end at once (a static picture, stable for screenshots). Returns the height.
  function forceLayout(view, nodes, links, byId, width) {
    const height = Math.max(560, Math.min(1400, 140 + view.nodes.length * 14));
    // Each node starts on a small spiral around its group's anchor, so that a short layout
    // already keeps groups apart.
    const at = anchors(view, width, height);
    const inGroup = new Map();
    for (const n of nodes) {
      const g = groupOf(n);
      const [x, y] = at.get(g) || [width / 2, height / 2];
      const i = inGroup.get(g) || 0;
      inGroup.set(g, i + 1);
      const r = 12 * Math.sqrt(i + 0.5);
      const a = i * 2.399963;
      n.ax = x;
      n.ay = y;
      n.x = x + r * Math.cos(a);
      n.y = y + r * Math.sin(a);
    }
    if (window.d3 && d3.forceSimulation) {
      // Fewer steps for more nodes and edges (each step costs about their number).
      const ticks = Math.max(30, Math.min(300, Math.round(40000 / (nodes.length + links.length + 1))));
      const simLinks = links.map((e) => ({ source: byId.get(e.from), target: byId.get(e.to) }));
      const sim = d3
        .forceSimulation(nodes)
        .force("link", d3.forceLink(simLinks).distance(140).strength(0.1))
        .force("charge", d3.forceManyBody().strength(-420))
        .force("x", d3.forceX((d) => d.ax).strength(0.3))
        .force("y", d3.forceY((d) => d.ay).strength(0.3))
        .force("collide", d3.forceCollide(48))
        .alphaDecay(1 - Math.pow(0.001, 1 / ticks))
        .stop();
      for (let i = 0; i < ticks; i++) sim.tick();
    } else {
      nodes.forEach((n, i) => {
        n.x = n.ax + 40 * Math.cos(i);
        n.y = n.ay + 40 * Math.sin(i);
      });
    }
    for (const n of nodes) {
      n.x = Math.max(60, Math.min(width - 60, n.x));
      n.y = Math.max(40, Math.min(height - 30, n.y));
    }
    return height;
  }

  // Large views: each group (a namespace, a kind of destination) a block of nodes in rows,
  // the blocks packed in rows across the width. Deterministic, linear in the nodes, no
  // overlap. Returns the height.
  function blockLayout(nodes, width) {
    const COL = 130;
    const ROW = 58;
    const PAD = 24;
    const groups = new Map();
    for (const n of nodes) {
      const g = groupOf(n);
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(n);
    }
    // An expanded namespace, then what it talks to outside the cluster, then the other
    // namespaces; without one, the namespaces, then the destinations.
    const focus = map.namespace ? `ns:${map.namespace}` : null;
    const rank = (g) => (g === focus ? 0 : g.startsWith("ns:") === !focus ? 1 : 2);
    const order = [...groups.keys()].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
    const maxCols = Math.max(1, Math.floor((width - 2 * PAD) / COL));
    let x = 0;
    let y = 0;
    let rowHeight = 0;
    for (const g of order) {
      // A namespace's own node first, then its members in the server's (sorted) order.
      const members = groups.get(g).sort((a, b) => (a.kind === "namespace" ? -1 : b.kind === "namespace" ? 1 : 0));
      const cols = Math.max(1, Math.min(maxCols, members.length, Math.ceil(Math.sqrt((members.length * ROW) / COL))));
      const rows = Math.ceil(members.length / cols);
      const w = cols * COL;
      const h = rows * ROW + 28;
      if (x > 0 && x + w > width) {
        x = 0;
        y += rowHeight;
        rowHeight = 0;
      }
      members.forEach((n, i) => {
        n.x = x + PAD + COL / 2 + (i % cols) * COL;
        n.y = y + PAD + 40 + Math.floor(i / cols) * ROW;
      });
      x += w + PAD;
      rowHeight = Math.max(rowHeight, h + PAD);
    }
    return Math.max(560, y + rowHeight + PAD);
  }

  function render(view) {
    const root = $("map");
    const width = Math.max(root.clientWidth || 960, 480);
    root.replaceChildren();

    $("map-back").hidden = !map.namespace;
    const t = view.totals;
    const c = t.verdicts;
    $("map-summary").textContent =
      (map.namespace ? `Namespace ${map.namespace}: ` : view.expanded ? "All workloads: " : "Namespaces (select one to expand): ") +
      `${t.workloads} workloads, ${t.edges} edges, ${t.events} events; ` +
      `${c.allowed} allowed, ${c["would-deny"]} would be denied, ${c.denied} denied, ${c.drift} drift`;

    // Workloads drawn inside their namespace's box: namespace nodes of an expanded view
    // are the boxes, not nodes (unless edges fold into them).
    const boxes = view.expanded ? view.nodes.filter((n) => n.kind === "namespace") : [];
    const ends = new Set();
    for (const e of view.edges) {
      ends.add(e.from);
      ends.add(e.to);
    }
    const nodes = view.nodes.filter((n) => !(view.expanded && n.kind === "namespace" && !ends.has(n.id))).map((n) => Object.assign({}, n));
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const links = view.edges.filter((e) => byId.has(e.from) && byId.has(e.to));

    const height = nodes.length > LARGE ? blockLayout(nodes, width) : forceLayout(view, nodes, links, byId, width);
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    root.setAttribute("height", String(height));

    const defs = svg("defs");
    for (const v of VERDICTS) {
      const m = svg("marker", { id: `arrow-${v.id}`, viewBox: "0 0 10 10", refX: 22, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      m.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: `arrow v-${v.id}` }));
      defs.append(m);
    }
    root.append(defs);

    // Namespace boxes around their workloads.
    const boxLayer = svg("g", { class: "boxes" });
    const inBox = new Map(boxes.map((b) => [b.id, []]));
    for (const n of nodes) {
      const list = n.kind === "workload" ? inBox.get(n.parent) : n.kind === "namespace" ? inBox.get(n.id) : undefined;
      if (list) list.push(n);
    }
    for (const b of boxes) {
      const members = inBox.get(b.id);
      if (!members.some((n) => n.kind === "workload")) continue;
      const xs = members.map((n) => n.x);
      const ys = members.map((n) => n.y);
      const x0 = Math.min(...xs) - 56;
      const y0 = Math.min(...ys) - 40;
      const g = svg("g", { class: "box", "data-id": b.id });
      g.append(svg("rect", { x: x0, y: y0, width: Math.max(...xs) + 56 - x0, height: Math.max(...ys) + 34 - y0, rx: 14 }));
      const label = svg("text", { x: x0 + 10, y: y0 + 16, class: "box-label" });
      label.textContent = `namespace ${b.label}`;
      g.append(label);
      boxLayer.append(g);
    }
    root.append(boxLayer);

    // A large view's edge titles (tooltips) are made when the pointer first reaches an edge:
    // thousands of them cost more to build and style than the whole drawing otherwise.
    const edgeLayer = svg("g", { class: "edges" });
    const eager = links.length <= LAZY_TABLE;
    const byEdge = eager ? null : new Map();
    for (const l of links) {
      const from = byId.get(l.from);
      const to = byId.get(l.to);
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", `edge-group v-${l.verdict}`);
      g.setAttribute("data-id", l.id);
      g.setAttribute("data-verdict", l.verdict);
      g.setAttribute("data-from", l.from);
      g.setAttribute("data-to", l.to);
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", from.x);
      line.setAttribute("y1", from.y);
      line.setAttribute("x2", to.x);
      line.setAttribute("y2", to.y);
      line.setAttribute("class", `edge v-${l.verdict}`);
      line.setAttribute("marker-end", `url(#arrow-${l.verdict})`);
      if (eager) line.append(edgeTitle(l, byId));
      else byEdge.set(l.id, l);
      g.append(line);
      if (l.verdict !== "allowed") {
        // Not colour alone: the verdict in words on the edge.
        const mark = svg("text", { x: (from.x + to.x) / 2, y: (from.y + to.y) / 2 - 4, class: `edge-mark v-${l.verdict}` });
        mark.textContent = VERDICT_TEXT[l.verdict];
        g.append(mark);
      }
      edgeLayer.append(g);
    }
    if (!eager) {
      edgeLayer.addEventListener("pointerover", (ev) => {
        const g = ev.target.closest && ev.target.closest("g.edge-group");
        const line = g && g.querySelector("line");
        const l = g && byEdge.get(g.getAttribute("data-id"));
        if (line && l && !line.querySelector("title")) line.append(edgeTitle(l, byId));
      });
    }
    root.append(edgeLayer);

    const nodeLayer = svg("g", { class: "nodes" });
    for (const n of nodes) {
      // Another namespace's (outside the user's scope) comes without figures: not openable.
      const openable = (n.kind === "namespace" && n.workloads !== undefined) || (n.kind === "workload" && n.pods !== undefined);
      const label = nodeLabel(n);
      const g = svg("g", {
        class: `node kind-${n.kind}${n.phase ? ` phase-${n.phase}` : ""}`,
        transform: `translate(${n.x.toFixed(1)},${n.y.toFixed(1)})`,
        "data-id": n.id,
        "aria-label": label,
      });
      if (openable) {
        g.setAttribute("tabindex", "0");
        g.setAttribute("role", "button");
      } else {
        g.setAttribute("role", "img");
      }
      const shape =
        n.kind === "workload"
          ? svg("circle", { r: 14 })
          : n.kind === "namespace"
            ? svg("rect", { x: -22, y: -16, width: 44, height: 32, rx: 8 })
            : svg("rect", { x: -13, y: -13, width: 26, height: 26, rx: 3, transform: "rotate(45)" });
      shape.setAttribute("class", "shape");
      g.append(shape);
      const text = svg("text", { y: n.kind === "namespace" ? 32 : 28, class: "node-label" });
      const short = n.label.length > 40 ? `${n.label.slice(0, 39)}…` : n.label;
      text.textContent = n.kind === "namespace" && n.workloads !== undefined ? `${short} (${n.workloads})` : short;
      g.append(text);
      const title = svg("title");
      title.textContent = label;
      g.append(title);
      nodeLayer.append(g);
    }
    // One listener for every node: a node opens (a namespace expands, a workload's panel)
    // by click, Enter or Space.
    const open = (ev) => {
      const g = ev.target.closest && ev.target.closest("g.node[role='button']");
      const n = g && byId.get(g.getAttribute("data-id"));
      if (!n) return false;
      map.focus = n.id;
      if (n.kind === "namespace") expand(n.label, ev.timeStamp);
      else openPanel(n.namespace, n.workload);
      return true;
    };
    nodeLayer.addEventListener("click", open);
    nodeLayer.addEventListener("keydown", (ev) => {
      if ((ev.key === "Enter" || ev.key === " ") && open(ev)) ev.preventDefault();
    });
    root.append(nodeLayer);

    // A large view's table is filled when it is opened, not with every drawing.
    const details = $("edges-details");
    details.open = view.edges.length <= LAZY_TABLE;
    table.pending = () => edgeTable(view, byId);
    if (details.open) table.fill();
    else $("edge-table").querySelector("tbody").replaceChildren();
  }

  // Views with more edges than this draw their table only when asked.
  const LAZY_TABLE = 400;
  const table = {
    pending: null,
    fill() {
      if (this.pending) this.pending();
      this.pending = null;
    },
  };
  $("edges-details").addEventListener("toggle", () => {
    if ($("edges-details").open) table.fill();
  });

  function edgeTable(view, byId) {
    const body = $("edge-table").querySelector("tbody");
    body.replaceChildren();
    const name = (id) => {
      const n = byId.get(id) || view.nodes.find((x) => x.id === id);
      if (!n) return id;
      return n.kind === "workload" ? `${n.namespace}/${n.label}` : n.label;
    };
    for (const e of view.edges) {
      body.append(
        el(
          "tr",
          { "data-id": e.id, "data-verdict": e.verdict },
          el("td", {}, name(e.from)),
          el("td", {}, name(e.to)),
          el("td", { class: `verdict v-${e.verdict}` }, VERDICT_TEXT[e.verdict] || e.verdict),
          el("td", { class: "num" }, String(e.events)),
          el("td", {}, when(e.last_seen)),
          el("td", {}, e.ports.join(", ")),
        ),
      );
    }
  }

  function expand(ns, since) {
    map.namespace = ns;
    loadMap(since);
  }

  $("map-back").addEventListener("click", (ev) => {
    map.namespace = null;
    loadMap(ev.timeStamp);
  });

  for (const id of ["f-since", "f-verdict", "f-namespace"]) {
    $(id).addEventListener("change", (ev) => {
      if (id === "f-namespace") map.namespace = null;
      loadMap(ev.timeStamp);
    });
  }
  let typing = null;
  $("f-search").addEventListener("input", () => {
    $("map").setAttribute("aria-busy", "true");
    clearTimeout(typing);
    typing = setTimeout(loadMap, 250);
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearTimeout(typing);
    loadMap();
  });

  // ---- The workload panel ----
  let opener = null;

  async function openPanel(namespace, workload) {
    opener = document.activeElement;
    const panel = $("panel");
    panel.hidden = false;
    $("panel-title").textContent = `${namespace}/${workload}`;
    for (const id of ["panel-phase", "panel-why", "panel-pods", "panel-yaml", "panel-diff", "panel-proposed-note"]) $(id).textContent = "";
    $("panel-destinations").querySelector("tbody").replaceChildren();
    $("panel-alerts").replaceChildren();
    panel.setAttribute("data-workload", `${namespace}/${workload}`);
    panel.setAttribute("aria-busy", "true");
    $("panel-title").focus();
    try {
      const d = await getJSON(workloadPath(namespace, workload));
      fillPanel(d);
    } catch (e) {
      $("panel-why").textContent = `Cannot load the panel: ${e.message}`;
    } finally {
      panel.setAttribute("aria-busy", "false");
    }
  }

  function fillPanel(d) {
    $("panel-phase").textContent = d.phase || "unknown (no rollout board yet)";
    $("panel-why").textContent = d.why || "";
    $("panel-pods").textContent = String(d.pods);
    const body = $("panel-destinations").querySelector("tbody");
    for (const r of d.destinations) {
      const pods = r.pods.join(", ") + (r.more_pods ? ` and ${r.more_pods} more` : "");
      const outcome = r.outcome ? `${r.outcome.established} established, ${r.outcome.failed} failed` : "";
      body.append(
        el(
          "tr",
          { "data-to": r.to, "data-verdict": r.verdict },
          el("td", {}, r.label + (r.service ? ` (Service ${r.service})` : "")),
          el("td", {}, `${r.address}:${r.port}/${r.protocol}`),
          el("td", { class: `verdict v-${r.verdict}` }, VERDICT_TEXT[r.verdict] || r.verdict),
          el("td", { class: "num" }, String(r.events)),
          el("td", {}, when(r.first_seen)),
          el("td", {}, when(r.last_seen)),
          el("td", {}, r.names.join(", ")),
          el("td", {}, pods),
          el("td", {}, outcome),
        ),
      );
    }
    if (d.proposed) {
      $("panel-yaml").textContent = d.proposed.yaml;
      $("panel-proposed-note").textContent =
        `NetworkPolicy ${d.proposed.name}` + (d.applied ? ", applied under the same name (diff below)" : ", not applied yet") +
        (d.breaks ? `; it would break ${d.breaks} observed flow${d.breaks === 1 ? "" : "s"}` : "");
    } else {
      $("panel-proposed-note").textContent = d.proposed_error || "No policy proposed: no observed egress.";
    }
    $("panel-copy").disabled = !d.proposed;
    $("panel-diff").textContent = d.diff || "";
    const alerts = $("panel-alerts");
    if (!d.alerts.length) alerts.append(el("li", {}, "No alerts."));
    for (const a of d.alerts) alerts.append(alertItem(a));
  }

  function alertItem(a) {
    const li = el("li", { "data-type": a.type || "egress-denied" });
    li.append(
      el("strong", {}, a.type === "dns-drift" ? "DNS drift" : "Unexpected egress"),
      ` to ${a.dst}:${a.port}/${a.protocol}`,
      a.names && a.names.length ? ` (${a.names.join(", ")})` : "",
      `, ${a.count} events, last seen ${when(a.last_seen)}`,
    );
    const pr = prLink(a.pull_request);
    if (pr) li.append(" ", pr);
    if (a.fix) li.append(el("pre", { class: "code" }, a.fix));
    return li;
  }

  // A pull request's link, only for http(s) addresses.
  function prLink(url) {
    if (!url) return null;
    let u;
    try {
      u = new URL(url);
    } catch (_) {
      return null;
    }
    if (u.protocol !== "https:" && u.protocol !== "http:") return null;
    return el("a", { href: u.href, rel: "noopener noreferrer" }, "pull request");
  }

  function closePanel() {
    $("panel").hidden = true;
    if (opener && document.contains(opener)) opener.focus();
    else if (map.focus) {
      const n = document.querySelector(`[data-id="${CSS.escape(map.focus)}"]`);
      if (n) n.focus();
    }
  }
  $("panel-close").addEventListener("click", closePanel);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("panel").hidden) closePanel();
  });
  $("panel-copy").addEventListener("click", async () => {
    const text = $("panel-yaml").textContent;
    try {
      await navigator.clipboard.writeText(text);
      status("Copied the proposed YAML.");
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents($("panel-yaml"));
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      status("Select and copy the YAML by hand (the clipboard is not available).");
    }
  });

  // ---- The rollout board ----
  const rollout = { rows: [], key: "namespace", asc: true };
  const PHASE_ORDER = ["unmanaged", "drifted", "enforced", "observing", "would-deny", "ready"];

  async function loadRollout() {
    status("Loading the rollout board…");
    try {
      const b = await getJSON("/v1/rollout");
      fillRollout(b);
      status("");
    } catch (e) {
      status(`Cannot load the rollout board: ${e.message}`);
    }
  }

  function fillRollout(b) {
    const g = b.guardrails;
    $("guardrails-phase").textContent =
      `Phase: ${g.phase}. Applied: ${g.applied.join(", ") || "none"}. Proposed: ${g.proposed.join(", ") || "none"}.`;
    const breaks = $("guardrails-breaks");
    breaks.replaceChildren();
    for (const w of g.breaks) breaks.append(el("li", {}, `would break ${w.namespace}/${w.workload}: ${w.flows.length} flows`));
    for (const w of g.denied) breaks.append(el("li", {}, `denies ${w.namespace}/${w.workload}: ${w.flows.length} flows`));

    const counts = new Map(PHASE_ORDER.map((p) => [p, 0]));
    for (const w of b.workloads) counts.set(w.phase, (counts.get(w.phase) || 0) + 1);
    const ul = $("phase-counts");
    ul.replaceChildren();
    for (const [phase, n] of counts) {
      ul.append(el("li", { "data-phase": phase }, el("span", { class: `phase phase-${phase}` }, phase), " ", el("strong", { class: "count" }, String(n))));
    }
    rollout.rows = b.workloads.map((w) => ({
      namespace: w.namespace,
      workload: w.workload,
      phase: w.phase,
      observed: w.observed_for_seconds,
      wouldDeny: w.would_deny.length,
      denied: w.denied.length,
    }));
    rolloutTable();
  }

  function rolloutTable() {
    const k = rollout.key;
    const rows = rollout.rows.slice().sort((a, b) => {
      const x = k === "phase" ? PHASE_ORDER.indexOf(a[k]) : a[k];
      const y = k === "phase" ? PHASE_ORDER.indexOf(b[k]) : b[k];
      const c = x < y ? -1 : x > y ? 1 : 0;
      return (rollout.asc ? c : -c) || (a.namespace + a.workload < b.namespace + b.workload ? -1 : 1);
    });
    const body = $("rollout-table").querySelector("tbody");
    body.replaceChildren();
    for (const r of rows) {
      const open = el("button", { type: "button", class: "link", "aria-label": `Open the panel of ${r.namespace}/${r.workload}` }, r.workload);
      open.addEventListener("click", () => openPanel(r.namespace, r.workload));
      body.append(
        el(
          "tr",
          { "data-workload": `${r.namespace}/${r.workload}`, "data-phase": r.phase },
          el("td", {}, r.namespace),
          el("td", {}, open),
          el("td", {}, el("span", { class: `phase phase-${r.phase}` }, r.phase)),
          el("td", {}, duration(r.observed)),
          el("td", { class: "num" }, String(r.wouldDeny)),
          el("td", { class: "num" }, String(r.denied)),
        ),
      );
    }
    for (const th of $("rollout-table").querySelectorAll("th")) {
      const b = th.querySelector("button");
      th.setAttribute("aria-sort", b && b.dataset.sort === k ? (rollout.asc ? "ascending" : "descending") : "none");
    }
  }

  for (const b of $("rollout-table").querySelectorAll("th button")) {
    b.addEventListener("click", () => {
      const k = b.dataset.sort;
      rollout.asc = rollout.key === k ? !rollout.asc : true;
      rollout.key = k;
      rolloutTable();
    });
  }

  // ---- Alerts ----
  async function loadAlerts() {
    status("Loading the alerts…");
    try {
      const list = await getJSON("/v1/alerts");
      const body = $("alerts-table").querySelector("tbody");
      body.replaceChildren();
      if (!list.length) body.append(el("tr", {}, el("td", { colspan: 7 }, "No alerts.")));
      for (const a of list) {
        const open = el("button", { type: "button", class: "link", "aria-label": `Open the panel of ${a.namespace}/${a.workload}` }, `${a.namespace}/${a.workload}`);
        open.addEventListener("click", () => openPanel(a.namespace, a.workload));
        body.append(
          el(
            "tr",
            { "data-type": a.type || "egress-denied" },
            el("td", {}, a.type === "dns-drift" ? "DNS drift" : "Unexpected egress"),
            el("td", {}, open),
            el("td", {}, `${a.dst}:${a.port}/${a.protocol}` + (a.names && a.names.length ? ` (${a.names.join(", ")})` : "")),
            el("td", { class: "num" }, String(a.count)),
            el("td", {}, when(a.last_seen)),
            el("td", {}, a.fix ? el("pre", { class: "code" }, a.fix) : ""),
            el("td", {}, prLink(a.pull_request) || "none"),
          ),
        );
      }
      status("");
    } catch (e) {
      status(`Cannot load the alerts: ${e.message}`);
    }
  }

  legend();
  loadMap();
})();
