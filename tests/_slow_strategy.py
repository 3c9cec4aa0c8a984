"""A test-only strategy whose proposals take a chosen time: random search after ``seconds`` of
sleep, or of busy Python (``busy``: holds the GIL like a heavy fit). Importing this module
registers it; a server process imports it with ``python -c`` (see ``slow_server_cmd``)."""

from __future__ import annotations

import sys
import time

from pydantic import Field

from service.strategies import register
from service.strategies._baselines import RandomParams, RandomStrategy


class SlowParams(RandomParams):
    seconds: float = Field(5.0, ge=0, description="compute time of each propose")
    busy: bool = Field(False, description="spin in Python instead of sleeping")
    recommend_seconds: float = Field(0.0, ge=0, description="sleep of each recommendation")


@register
class SlowStrategy(RandomStrategy):
    name = "test-slow"
    Params = SlowParams

    def propose(self, history, n):
        end = time.monotonic() + self.params.seconds
        while time.monotonic() < end:
            if not self.params.busy:
                time.sleep(min(0.05, max(end - time.monotonic(), 0)))
        return super().propose(history, n)

    def recommend(self, history):
        time.sleep(self.params.recommend_seconds)
        return super().recommend(history)


def slow_server_cmd(*args: str) -> list[str]:
    """``mixopt server`` in a process that knows ``test-slow``."""
    code = "import tests._slow_strategy; from service.cli import app; app(prog_name='mixopt')"
    return [sys.executable, "-c", code, "server", *args]
