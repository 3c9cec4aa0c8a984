/* Study page: header, charts and trials table, updated live from /dashboard/api. */
"use strict";

(() => {
  const { api, el, fmt, fmtPct, fmtTime, plot, domainColor, fidelityColor } = MX;
  const root = document.getElementById("study-root");
  const studyId = Number(root.dataset.studyId);
  const $ = (id) => document.getElementById(id);

  const S = {
    ov: null, domains: [], fids: [], k: 0, sign: 1, label: "objective",
    // trials, column by column (row i = one trial, id order); W[i] = Float32Array of k weights
    T: { id: [], number: [], fid: [], state: [], obj: [], pred: [], cost: [], attempts: [], dyn: [], finished: [], W: [] },
    index: new Map(), cursor: null, loaded: false, version: 0, drawn: {},
    recs: [], recsDrawn: -1, preds: null, predKey: null, predDrawn: null, fresh: new Set(),
    aioli: { id: null, detail: null, curve: null, key: null },
  };

  // ---- data ------------------------------------------------------------------------------

  function mergeTrials(c) {
    const T = S.T, k = c.domains.length;
    const W = MX.decodeWeights(c.weights);
    for (let r = 0; r < c.n; r++) {
      const id = c.id[r];
      let i = S.index.get(id);
      if (i === undefined) {
        i = T.id.length;
        S.index.set(id, i);
        T.id.push(id);
        if (S.loaded) S.fresh.add(id);
      }
      T.number[i] = c.number[r]; T.fid[i] = c.fidelity[r]; T.state[i] = c.state[r]; T.obj[i] = c.objective[r];
      T.pred[i] = c.predicted[r]; T.cost[i] = c.cost[r]; T.attempts[i] = c.attempts[r]; T.dyn[i] = c.dynamic[r];
      T.finished[i] = c.finished_at[r]; T.W[i] = W.subarray(r * k, (r + 1) * k);
    }
    if (c.n) S.version++;
  }

  async function loadTrials() {
    for (let page = 0; page < 20; page++) {
      const c = await api(`/studies/${studyId}/trials`, S.cursor ? { after_id: S.cursor.after_id, changed_since: S.cursor.changed_since } : {});
      mergeTrials(c);
      S.cursor = c.cursor;
      if (!c.truncated) break;
    }
    S.loaded = true;
  }

  async function loadRecs() {
    const last = S.recs.length ? S.recs[S.recs.length - 1].id : null;
    const h = await api(`/studies/${studyId}/recommendations`, { after_id: last });
    if (h.items.length) { S.recs.push(...h.items); S.recsVersion = (S.recsVersion || 0) + 1; }
  }

  async function loadPredictions() {
    const completed = S.ov.trial_counts.completed;
    const key = `${S.ov.recommendation ? S.ov.recommendation.id : "-"}:${completed}`;
    if (key === S.predKey) return;
    S.preds = await api(`/studies/${studyId}/predictions`);
    S.predKey = key;
  }

  async function loadAioli() {
    const ids = S.ov.dynamic_trials;
    $("aioli-card").hidden = ids.length === 0;
    if (!ids.length) return;
    const sel = $("aioli-trial");
    if (sel.options.length !== ids.length) {
      const keep = sel.value;
      sel.replaceChildren(...ids.map((id) => el("option", { value: id }, `trial ${id}`)));
      if (keep && ids.includes(Number(keep))) sel.value = keep;
      else {
        const live = ids.find((id) => ["leased", "running"].includes(S.T.state[S.index.get(id)]));
        sel.value = String(live || ids[0]);
      }
    }
    const id = Number(sel.value);
    const i = S.index.get(id);
    const final = i !== undefined && ["completed", "failed", "cancelled"].includes(S.T.state[i]);
    const key = `${id}:${S.T.state[i]}`;
    if (S.aioli.id === id && final && S.aioli.key === key) return;  // nothing can change any more
    const [detail, curve] = await Promise.all([api(`/trials/${id}`), api(`/trials/${id}/curve`)]);
    S.aioli = { id, detail, curve, key, version: (S.aioli.version || 0) + 1 };
    $("aioli-link").href = `${MX.base}/trials/${id}`;
  }

  async function tick() {
    S.ov = await api(`/studies/${studyId}`);
    if (!S.domains.length) setup(S.ov);
    await loadTrials();
    await Promise.all([loadRecs(), S.ov.has_predictions || S.ov.trial_counts.completed ? loadPredictions() : null]);
    await loadAioli();
    render();
  }

  // ---- one-time set-up -------------------------------------------------------------------

  function setup(ov) {
    S.domains = ov.domains; S.k = ov.domains.length; S.fids = ov.fidelities.map((f) => f.name);
    S.sign = ov.objective.sign; S.label = ov.objective.label;
    MX.legend($("domain-legend"), S.domains);
    $("filter-state").append(...["queued", "leased", "running", "completed", "failed", "cancelled"].map((s) => el("option", { value: s }, s)));
    $("filter-fidelity").append(...S.fids.map((f, i) => el("option", { value: i }, f)));
    $("mix-fidelity").addEventListener("change", () => { $("mix-fidelity").dataset.touched = "1"; render(); });
    $("mix-view").addEventListener("change", render);
    $("pred-source").addEventListener("change", () => { S.predDrawn = null; render(); });
    $("aioli-trial").addEventListener("change", () => { S.aioli.id = null; loadAioli().then(render); });
    for (const id of ["filter-state", "filter-fidelity"]) $(id).addEventListener("change", () => { table.page = 0; renderTable(); });
    $("filter-expr").addEventListener("input", () => { table.page = 0; renderTable(); });
    $("page-prev").addEventListener("click", () => table.setPage(Math.max(0, table.page - 1)));
    $("page-next").addEventListener("click", () => table.setPage(table.page + 1));
    table = makeTable();
  }

  // ---- header ----------------------------------------------------------------------------

  const show = (v) => (v === null || v === undefined ? null : S.sign * v);

  function renderHeader(ov) {
    document.title = `${ov.name} · mixopt`;
    $("study-name").textContent = ov.name;
    $("study-state").className = `badge ${ov.state}`;
    $("study-state").textContent = ov.state;
    const target = ov.fidelities.find((f) => f.target) || ov.fidelities[0];
    $("study-sub").textContent = `${ov.strategy} · objective: ${ov.objective.label}${ov.objective.higher_is_better ? " (higher is better)" : ""}`
      + ` · ${ov.domains.length} domains · fidelities: ${ov.fidelities.map((f) => `${f.name}${f.target ? " (target)" : ""}`).join(", ")}`;
    const c = ov.trial_counts;
    const budget = ov.budget;
    const stats = [
      MX.stat("cost spent", `${fmt(ov.spent_cost, 3)}${budget.cost ? ` / ${fmt(budget.cost, 3)}` : ""}`,
        ov.imported_cost ? `target-run units; imported runs (${fmt(ov.imported_cost, 3)}) not counted` : "target-run units",
        budget.cost ? ov.spent_cost / budget.cost : null),
      MX.stat("trials", `${ov.n_trials}${budget.max_trials ? ` / ${budget.max_trials}` : ""}`,
        `${c.completed} done · ${c.running + c.leased} running · ${c.queued} queued · ${c.failed} failed`,
        budget.max_trials ? ov.n_trials / budget.max_trials : null),
    ];
    const best = target && target.best_objective !== null ? target : ov.fidelities.filter((f) => f.best_objective !== null)
      .sort((a, b) => b.cost - a.cost)[0];
    stats.push(MX.stat(`best at ${best ? best.name : target.name}`, best ? fmt(show(best.best_objective)) : "–",
      best ? `trial ${best.best_trial_id}` : "no completed trial"));
    const rec = ov.recommendation;
    stats.push(MX.stat("recommendation", rec && rec.predicted !== null ? fmt(show(rec.predicted)) : rec ? "available" : "–",
      rec ? `${rec.uncertainty !== null ? `± ${fmt(rec.uncertainty, 3)} · ` : ""}${rec.based_on_trials} trials${rec.final ? " · final" : ""}` : "none yet"));
    if (rec && rec.spearman !== null) stats.push(MX.stat("model spearman", fmt(rec.spearman, 3), "held-out runs"));
    if (rec && rec.fidelity_correlation) {
      // how far the cheap proxies rank mixtures as the target does, as the strategy learned it
      const pairs = Object.entries(rec.fidelity_correlation).filter(([name]) => !target || name !== target.name);
      if (pairs.length) stats.push(MX.stat("proxy ↔ target", pairs.map(([n, r]) => `${n} ${fmt(r, 2)}`).join(" · "),
        "learned correlation"));
    }
    stats.push(MX.stat("parallelism", String(ov.parallelism), `seed ${ov.seed}`));
    $("study-stats").replaceChildren(...stats);
  }

  // ---- charts ----------------------------------------------------------------------------

  function finishedOrder() {
    const T = S.T, idx = [];
    for (let i = 0; i < T.id.length; i++) if ((T.state[i] === "completed" || T.state[i] === "failed") && T.finished[i] !== null) idx.push(i);
    return idx.sort((a, b) => T.finished[a] - T.finished[b] || T.id[a] - T.id[b]);
  }

  const MAX_MARKERS = 1500;  // per fidelity, in the best-so-far chart

  function renderProgress() {
    const T = S.T, order = finishedOrder();
    const nf = S.fids.length;
    const pts = Array.from({ length: nf }, () => ({ x: [], y: [], id: [], num: [] }));
    const best = Array.from({ length: nf }, () => ({ x: [], y: [], v: Infinity }));
    let spent = 0;
    for (const i of order) {
      spent += T.cost[i];
      if (T.state[i] !== "completed" || T.obj[i] === null) continue;
      const f = T.fid[i], p = pts[f], b = best[f];
      p.x.push(spent); p.y.push(show(T.obj[i])); p.id.push(T.id[i]); p.num.push(T.number[i]);
      if (T.obj[i] < b.v) { b.v = T.obj[i]; b.x.push(spent); b.y.push(show(T.obj[i])); }
    }
    const traces = [];
    S.fids.forEach((name, f) => {
      if (!pts[f].x.length) return;
      const b = best[f];
      b.x.push(spent); b.y.push(b.y[b.y.length - 1]);
      const color = fidelityColor(f);
      // Thousands of markers are a cloud: every stride-th run is the same cloud, drawn fast (SVG).
      const p = pts[f], stride = Math.ceil(p.x.length / MAX_MARKERS);
      const keep = (a) => (stride > 1 ? a.filter((_, j) => j % stride === 0) : a);
      traces.push({ type: "scatter", mode: "markers", name: `${name} runs`, x: keep(p.x), y: keep(p.y),
        customdata: keep(p.id), text: keep(p.num), marker: { color, size: 5, opacity: 0.35 }, legendgroup: name, showlegend: false,
        hovertemplate: `trial #%{text} (${name})<br>objective %{y:.4f}<br>spent %{x:.3f}<extra></extra>` });
      traces.push({ type: "scatter", mode: "lines+markers", name: `${name} best so far`, x: b.x, y: b.y,
        line: { shape: "hv", color, width: 2.2 }, marker: { size: b.x.map((_, j) => (j === b.x.length - 1 ? 0 : 6)), color },
        legendgroup: name, hovertemplate: `best at ${name}: %{y:.4f}<br>spent %{x:.3f}<extra></extra>` });
    });
    plot($("chart-progress"), traces, { xaxis: { title: { text: "cost spent (target-run units)" }, rangemode: "tozero" },
      yaxis: { title: { text: S.label } } }, "no completed trial yet");
  }

  function renderCost(ov) {
    const x = ov.fidelities.map((f) => `${f.name}${f.target ? " ★" : ""}`);
    const done = ov.fidelities.map((f) => f.trial_counts.completed * f.cost);
    const failed = ov.fidelities.map((f) => f.trial_counts.failed * f.cost);
    const flying = ov.fidelities.map((f) => f.in_flight_cost);
    const runs = ov.fidelities.map((f) => `${f.trial_counts.completed} runs × ${fmt(f.cost, 3)}`);
    const traces = [
      { type: "bar", name: "completed", x, y: done, text: runs, textposition: "auto", marker: { color: "#4C78A8" },
        hovertemplate: "%{x}: %{y:.3f} spent on completed runs (%{text})<extra></extra>" },
      { type: "bar", name: "failed", x, y: failed, marker: { color: "#E45756" }, hovertemplate: "%{x}: %{y:.3f} spent on failed runs<extra></extra>" },
      { type: "bar", name: "in flight", x, y: flying, marker: { color: "#BAB0AC" }, hovertemplate: "%{x}: %{y:.3f} committed to running/queued runs<extra></extra>" },
    ];
    const any = done.concat(failed, flying).some((v) => v > 0);
    plot($("chart-cost"), any ? traces : [], { barmode: "stack", xaxis: { title: { text: "fidelity (★ target)" } },
      yaxis: { title: { text: "cost (target-run units)" }, rangemode: "tozero" } }, "nothing spent yet");
  }

  function renderRecommendation(ov) {
    const rec = ov.recommendation;
    const traces = [];
    if (rec) {
      traces.push({ type: "bar", name: "recommended", x: S.domains, y: rec.mixture, marker: { color: S.domains.map((_, i) => domainColor(i)) },
        hovertemplate: "%{x}: %{y:.2%}<extra>recommended</extra>" });
      const target = ov.fidelities.find((f) => f.target);
      const bi = target && target.best_trial_id !== null ? S.index.get(target.best_trial_id) : undefined;
      if (bi !== undefined) {
        traces.push({ type: "scatter", mode: "markers", name: `best run at ${target.name} (trial ${target.best_trial_id})`, x: S.domains,
          y: Array.from(S.T.W[bi]), marker: { symbol: "diamond-open", size: 11, color: "#111827", line: { width: 1.6 } },
          hovertemplate: "%{x}: %{y:.2%}<extra>best run</extra>" });
      }
      if (ov.domain_tokens.every((t) => t)) {
        const tot = ov.domain_tokens.reduce((a, b) => a + b, 0);
        traces.push({ type: "scatter", mode: "markers", name: "natural (token share)", x: S.domains, y: ov.domain_tokens.map((t) => t / tot),
          marker: { symbol: "line-ew-open", size: 16, color: "#6b7785", line: { width: 2 } }, hovertemplate: "%{x}: %{y:.2%}<extra>natural</extra>" });
      }
      const unc = rec.uncertainty !== null ? ` ± ${fmt(rec.uncertainty, 3)}` : "";
      $("rec-caption").textContent = rec.predicted !== null
        ? `predicted ${S.label} ${fmt(show(rec.predicted))}${unc}${rec.predicted_fidelity ? ` at ${rec.predicted_fidelity}` : ""} · ${rec.based_on_trials} trials${rec.final ? " · final" : ""}`
        : `${rec.based_on_trials} trials${rec.final ? " · final" : ""}`;
    }
    plot($("chart-recommendation"), traces, { yaxis: { title: { text: "weight" }, tickformat: ".0%", rangemode: "tozero" },
      xaxis: { title: { text: "domain" } }, bargap: 0.25 }, "no recommendation yet");
  }

  function renderRecHistory() {
    const key = `${S.recsVersion}:${S.ov.state}:${Math.floor(new Date(S.ov.server_time) / 30000)}`;
    if (S.recsDrawn === key) return;
    S.recsDrawn = key;
    const recs = S.recs;
    const traces = [];
    let short = false, xrange;
    if (recs.length) {
      // The last recommendation holds until now (or the study's end): draw its span.
      const end = S.ov.finished_at || S.ov.server_time;
      const last = recs[recs.length - 1];
      const ext = new Date(end) > new Date(last.created_at) ? [Object.assign({}, last, { created_at: end })] : [];
      const all = recs.concat(ext);
      const x = all.map((r) => r.created_at);
      // Under a minute of history (one recommendation, a study that finished at once) the areas
      // have no width: draw the points and show a minute around them, not milliseconds.
      const t0 = new Date(x[0]).getTime(), t1 = new Date(x[x.length - 1]).getTime();
      short = t1 - t0 < 60_000;
      if (short) xrange = [new Date(t0 - 30_000).toISOString(), new Date(t1 + 30_000).toISOString()];
      S.domains.forEach((d, i) => traces.push({ type: "scatter", mode: short ? "lines+markers" : "lines", name: d, x,
        y: all.map((r) => r.mixture[i]), marker: { size: 7, color: domainColor(i) },
        stackgroup: "w", line: { shape: "hv", width: 0.5, color: domainColor(i) }, fillcolor: domainColor(i), legendgroup: d,
        hovertemplate: `${d}: %{y:.1%}<extra></extra>`, xaxis: "x", yaxis: "y" }));
      const withPred = all.filter((r) => r.predicted !== null);
      if (withPred.length) {
        const px = withPred.map((r) => r.created_at), py = withPred.map((r) => show(r.predicted));
        const u = withPred.map((r) => r.uncertainty || 0);
        traces.push({ type: "scatter", mode: "lines", x: px.concat(px.slice().reverse()),
          y: py.map((v, j) => v + u[j]).concat(py.map((v, j) => v - u[j]).reverse()), fill: "toself", fillcolor: "rgba(37,99,235,0.15)",
          line: { width: 0, shape: "hv" }, hoverinfo: "skip", showlegend: false, xaxis: "x", yaxis: "y2" });
        traces.push({ type: "scatter", mode: "lines+markers", name: "predicted ± 1σ", x: px, y: py, customdata: withPred.map((r) => r.based_on_trials),
          line: { color: "#2563eb", shape: "hv", width: 1.8 }, marker: { size: 4 }, xaxis: "x", yaxis: "y2",
          hovertemplate: "predicted %{y:.4f}<br>on %{customdata} trials<extra></extra>" });
      }
    }
    plot($("chart-rec-history"), traces, {
      xaxis: { type: "date", title: { text: "time" }, anchor: "y2", range: xrange },
      yaxis: { domain: [0.45, 1], title: { text: "weight" }, tickformat: ".0%", range: [0, 1] },
      yaxis2: { domain: [0, 0.33], title: { text: "predicted" } }, showlegend: false,
    }, "no recommendation yet");
  }

  function completedAt(f) {
    const T = S.T, idx = [];
    for (let i = 0; i < T.id.length; i++) if (T.fid[i] === f && T.state[i] === "completed" && T.obj[i] !== null) idx.push(i);
    return idx.sort((a, b) => T.obj[a] - T.obj[b] || T.id[a] - T.id[b]);
  }

  function syncFidelitySelect() {
    const sel = $("mix-fidelity");
    const counts = S.fids.map((_, f) => S.ov.fidelities[f].trial_counts.completed);
    const opts = S.fids.map((name, f) => `${name} (${counts[f]})`);
    if (sel.options.length !== opts.length) sel.replaceChildren(...opts.map((t, f) => el("option", { value: f }, t)));
    else opts.forEach((t, f) => { sel.options[f].textContent = t; });
    if (!sel.dataset.touched) {
      const target = S.ov.fidelities.findIndex((f) => f.target);
      const pick = counts[target] >= Math.max(2, Math.max(...counts) / 10) ? target : counts.indexOf(Math.max(...counts));
      sel.value = String(pick);
    }
    return Number(sel.value);
  }

  const MAX_BARS = 400, MAX_BAR_CELLS = 2500;  // bars x domains: beyond that, SVG drawing gets slow

  function renderMixtures(f) {
    const idx = completedAt(f), k = S.k, T = S.T;
    const node = $("chart-mixtures");
    if (!idx.length) { plot(node, [], {}, `no completed trial at ${S.fids[f]} yet`); return; }
    if ($("mix-view").value === "heatmap") {
      const z = idx.map((i) => Array.from(T.W[i]));
      const y = idx.map((_, r) => r + 1);
      const small = idx.length <= 2000;  // per-cell hover text costs memory: only for moderate sizes
      plot(node, [{ type: "heatmap", x: S.domains, y, z, colorscale: "YlGnBu", reversescale: true, zmin: 0, zmax: 1,
        text: small ? idx.map((i) => S.domains.map(() => `trial #${T.number[i]} · objective ${fmt(show(T.obj[i]))}`)) : undefined,
        colorbar: { title: { text: "weight" }, tickformat: ".0%" },
        hovertemplate: `rank %{y}${small ? " · %{text}" : ""}<br>%{x}: %{z:.1%}<extra></extra>` }],
      { yaxis: { title: { text: "rank by objective (1 = best)" }, autorange: "reversed", ...(idx.length <= 12 ? { tick0: 1, dtick: 1 } : {}) }, xaxis: { title: { text: "domain" } }, showlegend: false });
      return;
    }
    // Stacked bars, one per trial; beyond MAX_BARS each bar is the mean mixture of a rank bin.
    const bins = Math.min(idx.length, MAX_BARS, Math.max(50, Math.floor(MAX_BAR_CELLS / S.k)));
    const per = idx.length / bins;
    const x = [], obj = [], label = [], ids = [];
    const sums = Array.from({ length: k }, () => new Float64Array(bins));
    for (let b = 0; b < bins; b++) {
      const lo = Math.floor(b * per), hi = Math.max(lo + 1, Math.floor((b + 1) * per));
      let o = 0;
      for (let r = lo; r < hi; r++) { const i = idx[r]; o += T.obj[i]; for (let j = 0; j < k; j++) sums[j][b] += T.W[i][j]; }
      for (let j = 0; j < k; j++) sums[j][b] /= hi - lo;
      x.push(lo + 1); obj.push(show(o / (hi - lo)));
      label.push(hi - lo === 1 ? `trial #${T.number[idx[lo]]}` : `ranks ${lo + 1}–${hi} (mean of ${hi - lo})`);
      ids.push(hi - lo === 1 ? T.id[idx[lo]] : null);
    }
    const traces = S.domains.map((d, j) => ({ type: "bar", name: d, x, y: Array.from(sums[j]), customdata: ids, text: label,
      marker: { color: domainColor(j), line: { width: 0 } }, hovertemplate: `%{text}<br>${d}: %{y:.1%}<extra></extra>`, textposition: "none" }));
    traces.push({ type: "scatter", mode: x.length > 1 ? "lines" : "lines+markers", name: "objective", x, y: obj, yaxis: "y2",
      line: { color: "#111827", width: 1.5 }, marker: { color: "#111827", size: 7 },
      text: label, hovertemplate: "%{text}<br>objective %{y:.4f}<extra></extra>" });
    plot(node, traces, { barmode: "stack", bargap: bins > 60 ? 0 : 0.1, showlegend: false,
      xaxis: { title: { text: bins < idx.length ? `rank by objective (1 = best; ${idx.length} trials in ${bins} bins)` : "rank by objective (1 = best)" },
        range: [0.5, (bins < idx.length ? idx.length : bins) + 0.5], tickformat: "d",
        ...(idx.length <= 12 ? { tick0: 1, dtick: 1 } : {}) },
      yaxis: { title: { text: "weight" }, tickformat: ".0%", range: [0, 1] },
      yaxis2: { title: { text: S.label }, overlaying: "y", side: "right", showgrid: false }, margin: { l: 56, r: 64, t: 10, b: 44 } });
  }

  const MAX_LINES = 1000;

  function renderParcoords(f) {
    const all = completedAt(f), T = S.T, node = $("chart-parcoords");
    if (all.length < 2) { plot(node, [], {}, `parallel coordinates need two completed trials at ${S.fids[f]}`); return; }
    // Thousands of lines draw slowly (WebGL) and read as a blur: beyond MAX_LINES, the best half
    // and an even spread over the rest, so the colour scale still spans every objective.
    let idx = all;
    if (all.length > MAX_LINES) {
      const half = MAX_LINES / 2, rest = all.length - half;
      idx = all.slice(0, half);
      for (let j = 0; j < half; j++) idx.push(all[half + Math.floor((j * rest) / half)]);
    }
    $("parcoords-caption").textContent = idx.length < all.length
      ? `${idx.length} of ${all.length} trials at ${S.fids[f]}: the best ${MAX_LINES / 2} and ${MAX_LINES / 2} spread over the rest`
      : `${all.length} trials at ${S.fids[f]}`;
    const old = node.data && node.data[0] && node.data[0].dimensions;
    const keep = (j) => (old && old[j] && old[j].constraintrange ? { constraintrange: old[j].constraintrange } : {});
    const dims = S.domains.map((d, j) => Object.assign({ label: d, values: idx.map((i) => T.W[i][j]), range: [0, 1], tickformat: ".0%" }, keep(j)));
    const objs = idx.map((i) => show(T.obj[i]));
    dims.push(Object.assign({ label: S.label.length > 28 ? "objective" : S.label, values: objs }, keep(S.k)));
    plot(node, [{ type: "parcoords", dimensions: dims, labelangle: S.k > 12 ? -30 : 0, labelside: "top",
      line: { color: objs, colorscale: "Viridis", reversescale: !S.ov.objective.higher_is_better, showscale: true,
        colorbar: { title: { text: "objective" }, thickness: 12 } } }],
    { margin: { l: 50, r: 70, t: S.k > 12 ? 80 : 50, b: 24 }, showlegend: false });
  }

  function renderPredictions() {
    const sets = (S.preds && S.preds.sets) || [];
    const sel = $("pred-source");
    const names = sets.map((s) => s.source);
    if ([...sel.options].map((o) => o.value).join() !== names.join()) {
      const keep = sel.value;
      sel.replaceChildren(...sets.map((s) => el("option", { value: s.source }, s.title)));
      if (names.includes(keep)) sel.value = keep;
    }
    $("pred-empty").hidden = sets.length > 0;
    $("chart-predictions").hidden = sets.length === 0;
    sel.parentElement.hidden = sets.length < 2;
    const set = sets.find((s) => s.source === sel.value) || sets[0];
    if (!set) { $("pred-caption").textContent = ""; return; }
    const drawKey = `${S.predKey}:${set.source}`;
    if (S.predDrawn === drawKey) return;
    S.predDrawn = drawKey;
    const traces = [];
    let lo = Infinity, hi = -Infinity;
    S.fids.forEach((name, f) => {
      const rows = set.fidelity.map((v, j) => (v === f ? j : -1)).filter((j) => j >= 0);
      if (!rows.length) return;
      const px = rows.map((j) => show(set.predicted[j])), py = rows.map((j) => show(set.actual[j]));
      for (const v of px.concat(py)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      traces.push({ type: rows.length > 3000 ? "scattergl" : "scatter", mode: "markers", name, x: px, y: py,
        customdata: rows.map((j) => set.trial_id[j]), marker: { color: fidelityColor(f), size: 6, opacity: 0.7 },
        hovertemplate: `trial %{customdata} (${name})<br>predicted %{x:.4f}<br>actual %{y:.4f}<extra></extra>` });
    });
    if (traces.length) {
      const pad = (hi - lo) * 0.05 || 0.01;
      traces.unshift({ type: "scatter", mode: "lines", name: "y = x", x: [lo - pad, hi + pad], y: [lo - pad, hi + pad],
        line: { color: "#9ca3af", dash: "dash", width: 1 }, hoverinfo: "skip" });
    }
    const rho = set.spearman !== null ? `Spearman ρ = ${fmt(set.spearman, 3)}` : "Spearman ρ: too few points";
    const reported = set.reported_spearman !== null && set.reported_spearman !== undefined ? ` (strategy reported ${fmt(set.reported_spearman, 3)})` : "";
    $("pred-caption").textContent = `${S.label} · ${rho}${reported} · n = ${set.trial_id.length}`;
    MX.lazy($("chart-predictions"), () => plot($("chart-predictions"), traces, {
      xaxis: { title: { text: "predicted objective" } }, yaxis: { title: { text: "actual objective" } } },
    "no prediction for a completed trial yet"));
  }

  function renderAioli() {
    const a = S.aioli;
    if (!a.detail || a.drawn === a.version) return;
    a.drawn = a.version;
    MX.scheduleCharts($("chart-aioli-schedule"), $("chart-aioli-losses"), a.detail.segments, S.domains, a.curve);
  }

  // ---- trials table ----------------------------------------------------------------------

  let table = null;

  function makeTable() {
    const cols = [
      { key: "number", label: "#", num: true, render: (r) => el("a", { href: `${MX.base}/trials/${r.id}` }, `#${r.number}`) },
      { key: "fidelity", label: "fidelity" },
      { key: "state", label: "state", render: (r) => MX.badge(r.state) },
      { key: "objective", label: "objective", num: true, title: S.label },
      { key: "predicted", label: "predicted", num: true, title: "the strategy's prediction at proposal time" },
      { key: "cost", label: "cost", num: true, title: "target-run units" },
      { key: "attempts", label: "attempts", num: true },
      { key: "mix", label: "mixture", sortable: false, render: (r) => MX.mixbar(r.w, S.domains) },
    ];
    const shown = S.k <= 12 ? S.domains : [];
    shown.forEach((d, j) => cols.push({ key: `w${j}`, label: d, num: true, value: (r) => r.w[j], render: (r) => fmtPct(r.w[j]),
      title: `weight of ${d}` }));
    cols.push({ key: "finished", label: "finished", render: (r) => (r.finished ? fmtTime(r.finished) : "–") });
    return new MX.Table($("trials-table"), cols, { sortKey: "number", desc: true, pageSize: 50,
      onPage: (p, pages, n) => { $("page-info").textContent = `page ${p + 1} of ${pages} · ${n} trials`; } });
  }

  const OPS = { "<": (a, b) => a < b, "<=": (a, b) => a <= b, ">": (a, b) => a > b, ">=": (a, b) => a >= b,
    "=": (a, b) => a === b, "!=": (a, b) => a !== b };

  /** "web>0.3 objective<2.5 state=completed" -> a row predicate (null when the text is invalid). */
  function parseFilter(text) {
    const tests = [];
    for (const part of text.trim().split(/\s+/).filter(Boolean)) {
      const m = part.match(/^([A-Za-z0-9_.:\-]+?)(<=|>=|!=|<|>|=)(.+)$/);
      if (!m) return null;
      const [, field, op, raw] = m;
      const j = S.domains.indexOf(field);
      const num = Number(raw.endsWith("%") ? raw.slice(0, -1) / 100 : raw);
      let get;
      if (j >= 0) get = (r) => r.w[j];
      else if (["objective", "predicted", "cost", "number", "attempts", "id"].includes(field)) get = (r) => r[field];
      else if (["state", "fidelity"].includes(field)) { tests.push((r) => OPS[op](r[field], raw)); continue; }
      else return null;
      if (Number.isNaN(num)) return null;
      tests.push((r) => { const v = get(r); return v !== null && v !== undefined && OPS[op](v, num); });
    }
    return (r) => tests.every((t) => t(r));
  }

  function renderTable() {
    const T = S.T, st = $("filter-state").value, fi = $("filter-fidelity").value;
    const input = $("filter-expr");
    const pred = parseFilter(input.value);
    input.style.borderColor = pred ? "" : "#b91c1c";
    input.title = pred ? "" : "use domain or objective/predicted/cost/number/attempts, an operator (< <= > >= = !=) and a value";
    const rows = [];
    for (let i = 0; i < T.id.length; i++) {
      if (st && T.state[i] !== st) continue;
      if (fi !== "" && T.fid[i] !== Number(fi)) continue;
      const r = { id: T.id[i], number: T.number[i], fidelity: S.fids[T.fid[i]], state: T.state[i], objective: show(T.obj[i]),
        predicted: show(T.pred[i]), cost: T.cost[i], attempts: T.attempts[i], w: T.W[i], finished: T.finished[i] };
      if (pred && !pred(r)) continue;
      rows.push(r);
    }
    for (const id of S.fresh) table.fresh.add(id);
    S.fresh.clear();
    table.render(rows);
    $("trials-count").textContent = `${rows.length} shown of ${T.id.length}`;
  }

  // ---- render ----------------------------------------------------------------------------

  const HEAVY_MS = 10000;

  function render() {
    const ov = S.ov;
    renderHeader(ov);
    renderCost(ov);
    renderRecHistory();
    renderPredictions();
    renderAioli();
    const f = syncFidelitySelect();
    // Each chart is redrawn only when what it shows changed; the two heaviest follow the trials
    // at most every HEAVY_MS while a study runs (the reader's own choices apply at once).
    if (S.version !== S.heavyVersion && Date.now() - (S.heavyAt || 0) > HEAVY_MS) { S.heavyVersion = S.version; S.heavyAt = Date.now(); }
    const keys = {
      rec: `${S.version}:${ov.recommendation ? ov.recommendation.id : ""}`, progress: `${S.version}`,
      mixtures: `${S.heavyVersion}:${f}:${$("mix-view").value}`, parcoords: `${S.heavyVersion}:${f}`, table: `${S.version}`,
    };
    const draw = { rec: () => renderRecommendation(ov), progress: renderProgress,
      mixtures: () => MX.lazy($("chart-mixtures"), () => renderMixtures(f)),
      parcoords: () => MX.lazy($("chart-parcoords"), () => renderParcoords(f)), table: renderTable };
    for (const [name, key] of Object.entries(keys)) {
      if (S.drawn[name] !== key) { S.drawn[name] = key; draw[name](); }
    }
  }

  // Clicking a point that stands for one trial opens it.
  const openTrial = (ev) => {
    const p = ev.points && ev.points[0];
    const id = p && (Array.isArray(p.customdata) ? null : p.customdata);
    if (id) window.location.href = `${MX.base}/trials/${id}`;
  };
  for (const id of ["chart-progress", "chart-mixtures", "chart-predictions"]) MX.onClick($(id), openTrial);

  MX.live(tick, () => (S.ov && ["running", "paused", "draft"].includes(S.ov.state) ? 3000 : 15000));
})();
