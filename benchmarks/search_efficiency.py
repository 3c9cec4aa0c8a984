"""Search efficiency on pools of real and synthetic proxy runs.

Retrospective, pool-based simulation: every strategy and baseline may only propose mixtures of
the pool, at a fidelity where the pool has a result, pays that fidelity's cost and sees the
recorded objective; proposals are admitted as the server admits them. Prints the table (median
[IQR] over seeds of the cost to normalised regret 0 / 0.05 / 0.2 and the recommendation's regret
at costs 1, 3, 10), writes JSON, Markdown and a PNG. ``--suite`` runs every pool of the suite
(docs/benchmarks.md), resumably; without it, one pool (default: the RegMix runs, Pile-CC loss).

    nice -n 10 .venv/bin/python benchmarks/search_efficiency.py --suite --seeds 10 --jobs 2
    .venv/bin/python benchmarks/search_efficiency.py --pool my_pool.csv --strategies admire,regmix,random

Same as ``mixopt bench search`` (this script forwards its arguments).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli.bench import app  # noqa: E402

if __name__ == "__main__":
    app(["search", *sys.argv[1:]])
