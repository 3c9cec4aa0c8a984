"""Proposal latency: seconds per ``propose`` for each strategy with 5
and 20 domains and 50, 300 and 1,000 past results over 2 fidelities, cold (no cached state)
and warm (cached GP hyperparameters / regression fit), plus RegMix's recommendation time
(1,000,000 simulated mixtures, top-128 average). Prints a table, writes JSON and Markdown.

    nice -n 10 .venv/bin/python benchmarks/proposal_latency.py --repeats 3

Same as ``mixopt bench latency`` (this script forwards its arguments).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli.bench import app  # noqa: E402

if __name__ == "__main__":
    app(["latency", *sys.argv[1:]])
