"""Search efficiency on real released runs.

Retrospective, pool-based simulation: every strategy and baseline may only propose mixtures of
the pool, at a fidelity where the pool has a result, pays that fidelity's cost and sees the real
objective. Prints the table (median [IQR] over seeds), writes JSON, Markdown and a PNG of
best-so-far vs cost. Default pool: the RegMix runs (512 + 256 mixtures at 1M, the 256 at 60M,
objective the Pile-CC validation loss) from ``benchmarks/data/regmix``.

    nice -n 10 .venv/bin/python benchmarks/search_efficiency.py --seeds 10
    .venv/bin/python benchmarks/search_efficiency.py --pool my_pool.csv --strategies admire-mes,regmix,random

Same as ``mixopt bench search`` (this script forwards its arguments).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli.bench import app  # noqa: E402

if __name__ == "__main__":
    app(["search", *sys.argv[1:]])
