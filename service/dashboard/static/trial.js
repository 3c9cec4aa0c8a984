/* Trial page: mixture, losses, curves, attempts and log tail, updated while the trial runs. */
"use strict";

(() => {
  const { api, el, fmt, fmtPct, fmtTime, fmtCount, plot, domainColor } = MX;
  const $ = (id) => document.getElementById(id);
  const trialId = Number($("trial-root").dataset.trialId);
  const FINAL = ["completed", "failed", "cancelled"];
  const S = { detail: null, curve: null, lastStep: null, drawnCurve: -1, curveVersion: 0 };

  const leases = new MX.Table($("leases-table"), [
    { key: "attempt", label: "attempt", num: true },
    { key: "holder", label: "held by", render: (r) => (r.worker_id !== null
      ? el("span", {}, `${r.worker_name || "worker"} `, el("span", { class: "muted" }, `(#${r.worker_id})`))
      : `client ${r.client || "anonymous"}`) },
    { key: "created_at", label: "granted", render: (r) => fmtTime(r.created_at) },
    { key: "last_heartbeat_at", label: "last heartbeat", render: (r) => fmtTime(r.last_heartbeat_at) },
    { key: "ended_at", label: "ended", render: (r) => fmtTime(r.ended_at) },
    { key: "duration", label: "duration", num: true, value: (r) => r.duration, render: (r) => MX.fmtAge(r.duration) },
    { key: "outcome", label: "outcome", render: (r) => MX.badge(r.outcome || "held") },
    { key: "step", label: "progress", num: true, sortable: false, render: (r) => {
      const p = r.progress || {};
      if (p.step === undefined) return "–";
      return p.total_steps ? `${p.step} / ${p.total_steps}` : String(p.step);
    } },
    { key: "tps", label: "tokens/s", num: true, value: (r) => (r.progress || {}).tokens_per_s,
      render: (r) => fmtCount((r.progress || {}).tokens_per_s) },
  ], { sortKey: "attempt" });

  function mergeCurve(c) {
    if (!S.curve) { S.curve = c; } else if (c.step.length) {
      S.curve.step.push(...c.step); S.curve.tokens.push(...c.tokens); S.curve.train_loss.push(...c.train_loss);
      const n = S.curve.step.length - c.step.length;
      for (const [d, ys] of Object.entries(c.losses)) {
        if (!S.curve.losses[d]) S.curve.losses[d] = new Array(n).fill(null);
        S.curve.losses[d].push(...ys);
      }
      for (const d of Object.keys(S.curve.losses)) if (!c.losses[d]) S.curve.losses[d].push(...new Array(c.step.length).fill(null));
    }
    if (c.step.length) { S.lastStep = S.curve.step[S.curve.step.length - 1]; S.curveVersion++; }
  }

  async function tick() {
    const d = await api(`/trials/${trialId}`);
    const c = await api(`/trials/${trialId}/curve`, S.lastStep === null ? {} : { after_step: S.lastStep });
    S.detail = d;
    mergeCurve(c);
    render();
  }

  function render() {
    const d = S.detail, t = d.trial, domains = d.domains, sign = d.objective.sign;
    document.title = `Trial ${t.id} · ${d.study_name} · mixopt`;
    $("study-link").href = `${MX.base}/studies/${t.study_id}`;
    $("study-link").textContent = d.study_name;
    $("trial-title").replaceChildren(`Trial #${t.number} `, el("span", { class: "muted" }, `(id ${t.id})`), " ", MX.badge(t.state));
    const r = t.result;
    const stats = [
      MX.stat("objective", t.objective !== null ? fmt(sign * t.objective) : "–", d.objective.label),
      MX.stat("fidelity", t.fidelity, `cost ${fmt(t.cost, 3)} target-run units`),
      MX.stat("attempts", String(t.attempts), t.lease_owner ? `held by ${t.lease_owner}` : t.failure_reason || ""),
      MX.stat("predicted", t.predicted !== null ? fmt(sign * t.predicted) : "–",
        t.uncertainty !== null ? `± ${fmt(t.uncertainty, 3)} at proposal` : "at proposal"),
      MX.stat("tokens", r && r.tokens !== null ? fmtCount(r.tokens) : "–", r && r.wall_s !== null ? `${MX.fmtAge(r.wall_s)} wall clock` : ""),
      MX.stat("created", fmtTime(t.created_at), t.finished_at ? `finished ${fmtTime(t.finished_at)}` : t.started_at ? `started ${fmtTime(t.started_at)}` : ""),
    ];
    if (t.failure_reason) stats.push(MX.stat("failure", "failed", t.failure_reason));
    $("trial-stats").replaceChildren(...stats);

    plot($("chart-trial-mixture"), [{ type: "bar", x: domains, y: domains.map((n) => t.mixture[n] || 0),
      marker: { color: domains.map((_, i) => domainColor(i)) }, hovertemplate: "%{x}: %{y:.2%}<extra></extra>" }],
    { yaxis: { title: { text: "weight" }, tickformat: ".0%", rangemode: "tozero" }, showlegend: false, bargap: 0.25 });

    plot($("chart-trial-losses"), r ? [{ type: "bar", x: domains, y: domains.map((n) => r.losses[n] ?? null),
      marker: { color: domains.map((_, i) => domainColor(i)) }, hovertemplate: "%{x}: %{y:.4f}<extra></extra>" }] : [],
    { yaxis: { title: { text: "final validation loss" } }, showlegend: false, bargap: 0.25 },
    t.state === "failed" ? "the trial failed" : "no result yet");

    if (S.drawnCurve !== S.curveVersion) {
      S.drawnCurve = S.curveVersion;
      const c = S.curve, traces = [];
      // A series of a few points (e.g. only the end-of-run evaluation) gets markers: a line
      // through one point draws nothing.
      const mode = (ys) => (ys.filter((v) => v !== null).length <= 20 ? "lines+markers" : "lines");
      if (c && c.step.length) {
        domains.forEach((n, i) => { if (c.losses[n]) traces.push({ type: "scatter", mode: mode(c.losses[n]), name: n, x: c.step, y: c.losses[n],
          connectgaps: true, line: { color: domainColor(i), width: 1.6 }, marker: { size: 6 },
          hovertemplate: `${n}: %{y:.4f}<br>step %{x}<extra></extra>` }); });
        if (c.train_loss.some((v) => v !== null)) traces.push({ type: "scatter", mode: mode(c.train_loss), name: "train loss", x: c.step, y: c.train_loss,
          connectgaps: true, line: { color: "#111827", width: 1.2, dash: "dot" }, marker: { size: 4 },
          hovertemplate: "train: %{y:.4f}<br>step %{x}<extra></extra>" });
      }
      plot($("chart-trial-curve"), traces, { xaxis: { title: { text: "optimizer step" } }, yaxis: { title: { text: "loss" } } },
        "no loss curve reported");
    }

    $("trial-aioli").hidden = !t.dynamic;
    if (t.dynamic) MX.scheduleCharts($("chart-trial-schedule"), $("chart-trial-segment-losses"), d.segments, domains, null);

    leases.render(d.leases.map((l) => Object.assign({}, l, {
      duration: ((l.ended_at ? new Date(l.ended_at) : new Date(d.server_time)) - new Date(l.created_at)) / 1000 })));
    const log = $("log-tail");
    const text = d.log_tail || "no log received (the command executor sends the last lines with each heartbeat)";
    if (log.textContent !== text) {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4 || !log.dataset.seen;
      log.textContent = text;
      log.dataset.seen = "1";
      if (atEnd) log.scrollTop = log.scrollHeight;  // a tail: keep the newest lines in view
    }
  }

  MX.live(tick, () => (S.detail && FINAL.includes(S.detail.trial.state) ? 30000 : 2000));
})();
