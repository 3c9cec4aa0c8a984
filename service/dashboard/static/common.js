/* mixopt dashboard: helpers shared by the pages (no framework, no build step). */
"use strict";

const MX = (() => {
  const base = document.body.dataset.base || "/dashboard";

  // ---- data ------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, params) {
    const url = new URL(base + "/api" + path, window.location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    }
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) {
      window.location.href = `${base}/login?next=${encodeURIComponent(location.pathname + location.search)}`;
      throw new HttpError(401, "sign-in required");
    }
    if (!r.ok) {
      let detail = r.statusText;
      try { const body = await r.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) { /* not JSON */ }
      throw new HttpError(r.status, `${r.status}: ${detail}`);
    }
    return r.json();
  }

  /** base64 of little-endian uint16 (weight x 65535) -> Float32Array of n*k weights. */
  function decodeWeights(b64) {
    const bin = atob(b64);
    const n = bin.length >> 1;
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) / 65535;
    return out;
  }

  // ---- colours: one per domain, the same in every chart ----------------------------------

  const DOMAIN_PALETTE = [
    "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC",
    "#393B79", "#637939", "#8C6D31", "#843C39", "#7B4173", "#3182BD", "#E6550D", "#31A354", "#756BB1", "#636363",
  ];
  function domainColor(i) {
    if (i < DOMAIN_PALETTE.length) return DOMAIN_PALETTE[i];
    const hue = (i * 137.508) % 360;  // golden angle: well spread for any number of domains
    return `hsl(${hue.toFixed(0)}, 55%, ${i % 2 ? 42 : 58}%)`;
  }
  const FIDELITY_PALETTE = ["#0F766E", "#7C3AED", "#C2410C", "#1D4ED8", "#BE185D", "#4D7C0F", "#374151", "#A16207"];
  const fidelityColor = (i) => FIDELITY_PALETTE[i % FIDELITY_PALETTE.length];

  // ---- formatting ------------------------------------------------------------------------

  function fmt(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (x !== 0 && (Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3)) return x.toExponential(2);
    const s = Number(x).toPrecision(digits);
    return s.includes(".") && !s.includes("e") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  }
  const fmtPct = (w) => (w === null || w === undefined ? "–" : (100 * w).toFixed(1) + "%");
  function fmtCount(x) {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    if (a >= 1e9) return (x / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "B";
    if (a >= 1e6) return (x / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (x / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    return String(Math.round(x));
  }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }
  function fmtTime(iso) {
    if (!iso) return "–";
    const d = typeof iso === "number" ? new Date(iso * 1000) : new Date(iso);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // ---- DOM -------------------------------------------------------------------------------

  /** el("a", {href: "x", class: "y"}, "text", child, ...): text is always text, never HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const badge = (state) => el("span", { class: `badge ${state}` }, state);
  function stat(key, value, sub, fraction) {
    return el("div", { class: "stat" }, el("div", { class: "k" }, key), el("div", { class: "v", title: String(value) }, value),
      sub ? el("div", { class: "s", title: String(sub) }, sub) : null,
      fraction !== undefined && fraction !== null
        ? el("div", { class: "bar" }, el("span", { style: `width:${Math.min(100, Math.max(0, 100 * fraction)).toFixed(1)}%` })) : null);
  }
  function mixbar(weights, domains) {
    return el("span", { class: "mixbar", title: domains.map((d, i) => `${d} ${fmtPct(weights[i])}`).join(", ") },
      Array.from(weights, (w, i) => el("span", { style: `width:${(100 * w).toFixed(2)}%;background:${domainColor(i)}` })));
  }
  function legend(node, domains) {
    node.replaceChildren(...domains.map((d, i) => el("span", {}, el("i", { style: `background:${domainColor(i)}` }), d)));
  }

  /** A sortable table: columns [{key, label, num, value(row) -> sortable, render(row) -> node|text}]. */
  class Table {
    constructor(table, columns, { sortKey = null, desc = false, pageSize = 0, onPage = null } = {}) {
      this.table = table; this.columns = columns; this.sortKey = sortKey; this.desc = desc;
      this.pageSize = pageSize; this.page = 0; this.rows = []; this.onPage = onPage; this.fresh = new Set();
      const tr = el("tr");
      for (const c of columns) {
        const th = el("th", { class: `${c.num ? "num " : ""}${c.sortable === false ? "" : "sortable"}`, title: c.title || null }, c.label);
        if (c.sortable !== false) th.addEventListener("click", () => this.sortBy(c.key));
        c.th = th;
        tr.append(th);
      }
      table.tHead.replaceChildren(tr);
    }
    sortBy(key) {
      if (this.sortKey === key) this.desc = !this.desc; else { this.sortKey = key; this.desc = false; }
      this.render(this.rows);
    }
    setPage(p) { this.page = p; this.render(this.rows); }
    render(rows) {
      this.rows = rows;
      const col = this.columns.find((c) => c.key === this.sortKey);
      for (const c of this.columns) c.th.classList.remove("asc", "desc");
      let sorted = rows;
      if (col) {
        col.th.classList.add(this.desc ? "desc" : "asc");
        const v = col.value || ((r) => r[col.key]);
        const sign = this.desc ? -1 : 1;
        sorted = rows.map((r) => [v(r), r]).sort((a, b) => {
          const x = a[0], y = b[0];
          const xn = x === null || x === undefined || Number.isNaN(x), yn = y === null || y === undefined || Number.isNaN(y);
          if (xn || yn) return xn - yn;  // missing values last, either direction
          return (x < y ? -1 : x > y ? 1 : 0) * sign;
        }).map((p) => p[1]);
      }
      let shown = sorted;
      if (this.pageSize) {
        const pages = Math.max(1, Math.ceil(sorted.length / this.pageSize));
        this.page = Math.min(this.page, pages - 1);
        shown = sorted.slice(this.page * this.pageSize, (this.page + 1) * this.pageSize);
        if (this.onPage) this.onPage(this.page, pages, sorted.length);
      }
      const body = this.table.tBodies[0];
      body.replaceChildren(...shown.map((r) => {
        const tr = el("tr", { class: this.fresh.has(r.id) ? "fresh" : null, "data-id": r.id },
          this.columns.map((c) => el("td", { class: c.num ? "num" : null }, c.render ? c.render(r) : fmtCell(r[c.key]))));
        return tr;
      }));
      this.fresh.clear();
    }
  }
  const fmtCell = (v) => (typeof v === "number" ? fmt(v) : v === null || v === undefined ? "–" : String(v));

  // ---- charts ----------------------------------------------------------------------------

  const FONT = { family: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif', size: 12, color: "#1f2933" };
  const AXIS = { gridcolor: "#eef1f5", zerolinecolor: "#d5dbe3", linecolor: "#c5ccd6", ticks: "outside", tickcolor: "#c5ccd6", automargin: true };

  function layout(extra) {
    const l = Object.assign({
      font: FONT, margin: { l: 56, r: 16, t: 10, b: 44 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
      hovermode: "closest", legend: { orientation: "h", y: -0.22, x: 0 }, showlegend: true,
    }, extra || {});
    for (const key of Object.keys(l)) if (/^[xy]axis\d*$/.test(key)) l[key] = Object.assign({}, AXIS, l[key]);
    if (!l.xaxis) l.xaxis = Object.assign({}, AXIS);
    if (!l.yaxis) l.yaxis = Object.assign({}, AXIS);
    return l;
  }

  /** Free text (a worker's name) as Plotly shows it: Plotly reads <a>, <b>, <br> in labels as
   * markup, so a name like <a href=...> would become a link; escaped, it stays text. */
  function plotText(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  /** Draw (or update in place) a Plotly chart; a placeholder message when there is no data. */
  function plot(node, traces, extraLayout, message) {
    if (!traces || traces.length === 0) {
      if (node.dataset.plotted) { Plotly.purge(node); delete node.dataset.plotted; node._mxHooked = false; }
      node.replaceChildren(el("div", { class: "placeholder" }, message || "no data yet"));
      return;
    }
    if (!node.dataset.plotted) node.replaceChildren();
    node.dataset.plotted = "1";
    Plotly.react(node, traces, layout(extraLayout), { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] });
    if (node._mxClick && !node._mxHooked) { node.on("plotly_click", node._mxClick); node._mxHooked = true; }
  }
  /** Run ``draw`` once ``node`` is on (or near) the screen, now if it is; a later call replaces a
   * pending draw. Charts below the fold then cost nothing until the reader scrolls to them. */
  function lazy(node, draw) {
    node._mxDraw = draw;
    if (!node._mxObserver) {
      node._mxObserver = new IntersectionObserver((entries) => {
        node._mxVisible = entries[entries.length - 1].isIntersecting;
        if (node._mxVisible && node._mxDraw) { const f = node._mxDraw; node._mxDraw = null; setTimeout(f, 0); }
      }, { rootMargin: "400px 0px" });
      node._mxObserver.observe(node);
    }
    if (node._mxVisible) { node._mxDraw = null; setTimeout(draw, 0); }
  }

  /** Call ``fn(event)`` when a point of the chart in ``node`` is clicked (now and after redraws). */
  function onClick(node, fn) { node._mxClick = fn; }

  /** Online trials: the mixture trained on by optimizer step (stacked, step-shaped) and the
   * per-domain losses reported at segment ends (and the heartbeat curve, when any). */
  function scheduleCharts(mixNode, lossNode, segments, domains, curve) {
    const attempt = segments.reduce((a, s) => Math.max(a, s.attempt), 0);
    const segs = segments.filter((s) => s.attempt === attempt).sort((a, b) => a.index - b.index);
    const xs = [], kinds = [];
    let step = 0;
    for (const s of segs) { xs.push(step); kinds.push(s.kind); step += s.steps; }
    const mixTraces = [];
    if (segs.length) {
      const x = [];
      for (let j = 0; j < segs.length; j++) { if (segs[j].steps > 0) x.push(xs[j], xs[j] + segs[j].steps); }
      domains.forEach((d, i) => {
        const y = [], text = [];
        segs.forEach((s, j) => { if (s.steps > 0) { const w = s.mixture[d] || 0; y.push(w, w); text.push(s.kind, s.kind); } });
        mixTraces.push({ type: "scatter", mode: "lines", name: d, x, y, text, stackgroup: "mix", line: { width: 0.5, color: domainColor(i) },
          fillcolor: domainColor(i), hovertemplate: `${d}: %{y:.3f}<br>step %{x} (%{text})<extra></extra>` });
      });
    }
    plot(mixNode, mixTraces, { xaxis: { title: { text: "optimizer step" } }, yaxis: { title: { text: "proportion" }, range: [0, 1], tickformat: ".0%" },
      showlegend: true, legend: { orientation: "h", y: -0.22, x: 0, traceorder: "normal" } }, "no segment handed out yet");

    const lossTraces = [];
    const ends = segs.filter((s) => s.losses).map((s) => ({ x: xs[segs.indexOf(s)] + s.steps, losses: s.losses, kind: s.kind }));
    const hasCurve = curve && curve.step && curve.step.length > 0;
    domains.forEach((d, i) => {
      if (hasCurve && curve.losses[d]) {
        lossTraces.push({ type: "scatter", mode: "lines", name: d, x: curve.step, y: curve.losses[d], line: { color: domainColor(i), width: 1.6 },
          connectgaps: true, hovertemplate: `${d}: %{y:.4f}<br>step %{x}<extra></extra>` });
      } else if (ends.length) {
        lossTraces.push({ type: "scatter", mode: "lines+markers", name: d, x: ends.map((e) => e.x), y: ends.map((e) => e.losses[d]),
          text: ends.map((e) => e.kind), marker: { size: 4 }, line: { color: domainColor(i), width: 1.4 },
          hovertemplate: `${d}: %{y:.4f}<br>step %{x} (after %{text})<extra></extra>` });
      }
    });
    plot(lossNode, lossTraces, { xaxis: { title: { text: "optimizer step" } }, yaxis: { title: { text: "validation loss" } } },
      "no losses reported yet");
  }

  // ---- live updates ----------------------------------------------------------------------

  /** Run ``tick`` now and every ``ms`` while live; show the time of the last good update. */
  function live(tick, ms) {
    const dot = document.getElementById("live-dot");
    const stamp = document.getElementById("last-updated");
    const toggle = document.getElementById("live-toggle");
    const banner = document.getElementById("error-banner");
    let paused = false, timer = null, running = false;
    async function run() {
      if (running) return;
      running = true;
      try {
        await tick();
        const now = new Date();
        stamp.textContent = now.toLocaleTimeString();
        stamp.dateTime = now.toISOString();
        dot.className = paused ? "dot" : "dot on";
        banner.hidden = true;
      } catch (e) {
        dot.className = "dot err";
        banner.textContent = `Could not update: ${e.message}`;
        banner.hidden = false;
        if (!(e instanceof HttpError)) console.warn(e);
      } finally {
        running = false;
        if (!paused) timer = setTimeout(run, typeof ms === "function" ? ms() : ms);
      }
    }
    toggle.addEventListener("click", () => {
      paused = !paused;
      toggle.textContent = paused ? "Resume" : "Pause";
      if (paused) { clearTimeout(timer); dot.className = "dot"; } else run();
    });
    run();
    return { refresh: () => { clearTimeout(timer); run(); } };
  }

  return { base, api, HttpError, plotText, decodeWeights, domainColor, fidelityColor, fmt, fmtPct, fmtCount, fmtAge, fmtTime, el, badge, stat,
    mixbar, legend, Table, layout, plot, lazy, onClick, scheduleCharts, live };
})();
