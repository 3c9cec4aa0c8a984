/* Studies list: state, strategy, spending, best objective and trial counts; updated live. */
"use strict";

(() => {
  const { api, el, fmt } = MX;
  const $ = (id) => document.getElementById(id);
  let items = [];

  const best = (s) => {
    const v = s.best[s.target_fidelity] ?? null;
    if (v !== null) return { value: s.objective.sign * v, where: s.target_fidelity };
    const any = Object.entries(s.best).sort((a, b) => a[1] - b[1])[0];
    return any ? { value: s.objective.sign * any[1], where: any[0] } : { value: null, where: null };
  };

  const table = new MX.Table($("studies-table"), [
    { key: "id", label: "id", num: true },
    { key: "name", label: "study", render: (s) => el("a", { href: `${MX.base}/studies/${s.id}` }, s.name) },
    { key: "state", label: "state", render: (s) => MX.badge(s.state) },
    { key: "strategy", label: "strategy" },
    { key: "best", label: "best objective", num: true, value: (s) => best(s).value, render: (s) => {
      const b = best(s);
      return b.value === null ? "–" : el("span", { title: s.objective.label }, fmt(b.value), " ", el("span", { class: "muted" }, `@${b.where}`));
    } },
    { key: "objective", label: "objective", sortable: false, render: (s) => el("span", { class: "muted" }, s.objective.label) },
    { key: "spent", label: "cost spent / budget", num: true, value: (s) => s.spent_cost, render: (s) => {
      const frac = s.budget.cost ? s.spent_cost / s.budget.cost : s.budget.max_trials ? s.n_trials / s.budget.max_trials : null;
      return el("span", {}, frac !== null ? el("span", { class: "minibar" }, el("span", { style: `width:${Math.min(100, 100 * frac).toFixed(1)}%` })) : null,
        `${fmt(s.spent_cost, 3)}${s.budget.cost ? ` / ${fmt(s.budget.cost, 3)}` : ""}`);
    } },
    { key: "n_trials", label: "trials", num: true, render: (s) => `${s.n_trials}${s.budget.max_trials ? ` / ${s.budget.max_trials}` : ""}` },
    { key: "counts", label: "done · running · queued · failed", sortable: false, render: (s) => {
      const c = s.trial_counts;
      return `${c.completed} · ${c.running + c.leased} · ${c.queued} · ${c.failed}`;
    } },
    { key: "created_at", label: "created", render: (s) => MX.fmtTime(s.created_at) },
  ], { sortKey: "id", desc: true });

  function render() {
    const q = $("study-filter").value.trim().toLowerCase();
    const shown = q ? items.filter((s) => `${s.name} ${s.strategy} ${s.state}`.toLowerCase().includes(q)) : items;
    $("studies-empty").hidden = items.length > 0;
    table.render(shown);
  }

  $("study-filter").addEventListener("input", render);
  MX.live(async () => { items = (await api("/studies")).items; render(); }, 5000);
})();
