/* Workers page: every worker, what it runs, how far, how fast; updated live. */
"use strict";

(() => {
  const { api, el, fmt, fmtAge, fmtCount, plot } = MX;
  const $ = (id) => document.getElementById(id);

  const caps = (c) => [c.device, c.memory_gb ? `${fmt(c.memory_gb, 3)} GB` : null, c.executor,
    c.max_params ? `≤ ${fmtCount(c.max_params)} params` : null, c.models ? `models: ${c.models.join(", ")}` : null,
    c.dynamic === false ? "no online trials" : null].filter(Boolean).join(" · ");

  const table = new MX.Table($("workers-table"), [
    { key: "name", label: "worker", render: (w) => el("span", {}, w.name, " ", el("span", { class: "muted" }, `#${w.id}`)) },
    { key: "status", label: "status", render: (w) => MX.badge(w.status) },
    { key: "caps", label: "capabilities", sortable: false, render: (w) => caps(w.capabilities) },
    { key: "current_trial_id", label: "current trial", num: true, render: (w) => (w.current_trial_id === null ? "–"
      : el("a", { href: `${MX.base}/trials/${w.current_trial_id}` }, `trial ${w.current_trial_id}`,
        w.current_study_id !== null ? ` (study ${w.current_study_id})` : "", w.attempt > 1 ? ` · attempt ${w.attempt}` : "")) },
    { key: "progress", label: "progress", sortable: false, render: (w) => {
      const p = w.progress || {};
      if (p.step === undefined) return "–";
      const frac = p.total_steps ? p.step / p.total_steps : null;
      return el("span", {}, frac !== null ? el("span", { class: "minibar" }, el("span", { style: `width:${(100 * frac).toFixed(1)}%` })) : null,
        p.total_steps ? `${p.step} / ${p.total_steps}` : `step ${p.step}`);
    } },
    { key: "train_loss", label: "train loss", num: true, value: (w) => (w.progress || {}).train_loss, render: (w) => fmt((w.progress || {}).train_loss) },
    { key: "tokens_per_s", label: "tokens/s", num: true, render: (w) => fmtCount(w.tokens_per_s) },
    { key: "heartbeat_age_s", label: "heartbeat age", num: true, render: (w) => fmtAge(w.heartbeat_age_s) },
    { key: "seen_age_s", label: "last seen", num: true, render: (w) => (w.seen_age_s === null ? "–" : `${fmtAge(w.seen_age_s)} ago`) },
    { key: "completed_trials", label: "completed", num: true },
  ], { sortKey: "id", desc: true });

  async function tick() {
    const data = await api("/workers");
    const items = data.items;
    $("workers-empty").hidden = items.length > 0;
    table.render(items);
    const busy = items.filter((w) => w.status === "busy").length;
    $("worker-summary").textContent = `${items.length} registered · ${busy} busy · ${items.filter((w) => w.status === "idle").length} idle`;
    const fast = items.filter((w) => w.tokens_per_s !== null);
    plot($("chart-throughput"), fast.length ? [{ type: "bar", orientation: "h", y: fast.map((w) => MX.plotText(`${w.name} #${w.id}`)),
      x: fast.map((w) => w.tokens_per_s), marker: { color: "#4C78A8" }, hovertemplate: "%{y}: %{x:,.0f} tokens/s<extra></extra>" }] : [],
    { xaxis: { title: { text: "training tokens / s" }, rangemode: "tozero" }, showlegend: false, bargap: 0.45,
      margin: { l: 140, r: 16, t: 10, b: 44 } },
    "no busy worker reports its throughput");
  }

  MX.live(tick, 3000);
})();
