"""A RegMix (or ADMIRE) study of the demo corpus, made through the API, whose recommendation is
the prior of Aioli's restricted variant in ``mixopt bench aioli``.

On a running ``mixopt server`` it creates a study over the demo pool's five domains and its two
fidelities (``llama-tiny`` on 25k and 200k tokens), imports the pool's 256 recorded runs with
their per-domain losses (``benchmarks/data/demo_pool``; ``mixopt runs import``), starts it, waits
for its recommendation and prints the study's id and mixture. Then::

    python benchmarks/aioli_prior_study.py --url http://127.0.0.1:8000
    mixopt bench aioli --methods stratified,aioli-restricted --prior-from-study ID --url http://127.0.0.1:8000

The study runs with ``dispatch: ask`` and a budget of one target run, so it queues nothing for
workers; its recommendation rests on the imported runs alone (the mean validation loss over the
domains, the pool's objective).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.client import ApiError, MixoptClient  # noqa: E402

DEMO_POOL_DIR = ROOT / "benchmarks" / "data" / "demo_pool"


def runs_with_losses(pool_dir: Path, out: Path) -> tuple[list[str], dict]:
    """The pool CSV with ``loss_<domain>`` columns from the pool's ``meta.json`` written to ``out``;
    returns the domains and the meta."""
    meta = json.loads((pool_dir / "meta.json").read_text())
    domains = list(meta["domains"])
    with (pool_dir / "pool.csv").open(newline="") as src, out.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, [*reader.fieldnames, *(f"loss_{d}" for d in domains)])
        writer.writeheader()
        for row in reader:
            losses = meta["per_domain_losses"][row["mixture_id"]][row["fidelity"]]
            writer.writerow({**row, **{f"loss_{d}": losses[d] for d in domains}})
    return domains, meta


def study_body(domains: list[str], meta: dict, strategy: str, seed: int) -> dict:
    fidelities = [{"name": name, "model": f["model"], "tokens": f["tokens"], "cost": f["cost"], "target": f["cost"] == 1.0}
                  for name, f in meta["fidelities"].items()]
    return {
        "name": f"demo-pool {strategy} prior (seed {seed}, {int(time.time())})",
        "domains": [{"name": d} for d in domains],
        "objective": {"kind": "mean_loss"},
        "fidelities": fidelities,
        "strategy": {"name": strategy},
        "budget": {"cost": 1.0},
        "dispatch": "ask",
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="server (default $MIXOPT_URL or http://127.0.0.1:8000)")
    parser.add_argument("--strategy", default="regmix", choices=("regmix", "admire"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-dir", type=Path, default=DEMO_POOL_DIR)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the recommendation")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, MixoptClient(args.url) as api:
        runs = Path(tmp) / "runs.csv"
        domains, meta = runs_with_losses(args.pool_dir, runs)
        study = api.create_study(study_body(domains, meta, args.strategy, args.seed))
        command = [sys.executable, "-m", "service", "runs", "import", str(runs), "--study", str(study["id"]), "--url", api.url]
        subprocess.run(command, check=True, cwd=ROOT)
        api.start(study["id"])
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                rec = api.recommendation(study["id"])
                break
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    out = {"study_id": study["id"], "strategy": args.strategy, "mixture": rec["mixture"],
           "based_on_trials": rec["based_on_trials"], "corpus_fingerprint": meta["corpus_fingerprint"]}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
