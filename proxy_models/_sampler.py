"""Mixture sampling: which domain each training example comes from, and which window of it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np


def validate_mixture(mixture: Mapping[str, float], domains: Sequence[str], field: str = "mixture") -> np.ndarray:
    """Weights ``k`` in the order of ``domains``; missing domains get 0.

    Raises:
        ValueError: naming ``field`` for an unknown domain, a negative or non-finite weight, or
            weights that do not sum to 1 (tolerance 1e-4; they are renormalised within it).
    """
    if not isinstance(mixture, Mapping) or not mixture:
        raise ValueError(f"{field}: must be a non-empty mapping of domain to weight")
    index = {d: i for i, d in enumerate(domains)}
    weights = np.zeros(len(domains))
    for name, value in mixture.items():
        if name not in index:
            raise ValueError(f"{field}: unknown domain {name!r}; the corpus has {', '.join(domains)}")
        value = float(value)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{field}[{name!r}]: weight must be finite and >= 0, got {value}")
        weights[index[name]] = value
    total = weights.sum()
    if abs(total - 1.0) > 1e-4:
        raise ValueError(f"{field}: weights must sum to 1, got {total:.6g}")
    return weights / total


class BaseDomainScheduler(ABC):
    """Assigns each example of a stretch of training to a domain."""

    @abstractmethod
    def assign(self, weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Domain indices (``n``) for ``n`` consecutive examples drawn with ``weights`` (``k``)."""


class LowDiscrepancyScheduler(BaseDomainScheduler):
    """Deterministic apportionment: domain ``i``'s ``j``-th example is placed at ``(j + u_i) / p_i``
    with a random phase ``u_i ~ U[0, 1)``, and examples are taken in order of place.

    Every prefix of ``n`` examples then holds ``p_i n ± (1 + k p_i)`` examples of domain ``i``,
    so a batch holds ``p_i B`` of them up to rounding and a run realises the mixture almost
    exactly, while a domain of weight 0 never appears. Unlike ``int(p_i B)`` per batch, small
    weights are not rounded away (a smoothed one-hot of many domains stays smoothed).
    """

    def assign(self, weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = np.asarray(weights, dtype=np.float64)
        active = np.flatnonzero(weights > 0)
        phases = rng.random(active.size)
        counts = np.ceil(weights[active] * n).astype(np.int64) + 2
        labels = np.repeat(active, counts)
        within = np.arange(labels.size) - np.repeat(np.cumsum(counts) - counts, counts)
        places = (within + np.repeat(phases, counts)) / weights[labels]
        return labels[np.argsort(places, kind="stable")[:n]]


class IIDScheduler(BaseDomainScheduler):
    """Independent categorical draws: the textbook sampler, for comparison (shares deviate by
    ``~sqrt(p (1-p) / n)``)."""

    def assign(self, weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(weights), size=n, p=np.asarray(weights) / np.sum(weights))


class MixtureSampler:
    """Draws training windows of ``seq_len + 1`` tokens from per-domain token streams.

    Each domain's stream is cut into non-overlapping windows, visited in a fresh random order
    every epoch (with a random offset), so a domain repeats only after all of it was seen.

    Args:
        streams: per domain, the training tokens (1-d arrays, e.g. memmaps).
        seq_len: tokens per example (windows hold ``seq_len + 1``).
        seed: makes the run reproducible: same seed, same weights → same batches.
        scheduler: how examples are assigned to domains.
        names: domain names, for error messages.
    """

    def __init__(
        self,
        streams: Sequence[np.ndarray],
        seq_len: int,
        seed: int = 0,
        scheduler: BaseDomainScheduler | None = None,
        names: Sequence[str] | None = None,
    ):
        self.streams, self.seq_len, self.seed = list(streams), int(seq_len), int(seed)
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.streams))]
        self.scheduler = scheduler or LowDiscrepancyScheduler()
        k = len(self.streams)
        self.examples = np.zeros(k, dtype=np.int64)  # examples drawn per domain, all epochs
        self._epoch = np.zeros(k, dtype=np.int64)
        self._cursor = np.zeros(k, dtype=np.int64)
        self._order: list[np.ndarray | None] = [None] * k
        self._offset = np.zeros(k, dtype=np.int64)
        self._calls = 0

    def windows_per_epoch(self, domain: int) -> int:
        return max((len(self.streams[domain]) - 1) // self.seq_len - 1, 0)

    def epochs(self) -> np.ndarray:
        """Passes over each domain's training tokens so far (``k``)."""
        sizes = np.array([max(self.windows_per_epoch(i), 1) for i in range(len(self.streams))])
        return self.examples / sizes

    def _starts(self, domain: int, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self._order[domain] is None or self._cursor[domain] >= len(self._order[domain]):
                n_windows = self.windows_per_epoch(domain)
                if n_windows <= 0:
                    raise ValueError(f"corpus: domain {self.names[domain]!r} has {len(self.streams[domain])} training "
                                     f"tokens, too few for seq_len {self.seq_len}")
                rng = np.random.default_rng([self.seed, domain, int(self._epoch[domain]), 1])
                self._order[domain] = rng.permutation(n_windows)
                self._offset[domain] = rng.integers(self.seq_len)
                self._cursor[domain] = 0
                self._epoch[domain] += 1
            take = self._order[domain][self._cursor[domain] : self._cursor[domain] + n]
            self._cursor[domain] += take.size
            out.append(take * self.seq_len + self._offset[domain])
            n -= take.size
        return np.concatenate(out)

    def sample(self, weights: np.ndarray, n_batches: int, batch_size: int) -> np.ndarray:
        """Domain and window start of every example of the next ``n_batches`` batches.

        Returns:
            ``n_batches x batch_size x 2`` int64: ``[..., 0]`` domain index, ``[..., 1]`` start.
        """
        n = n_batches * batch_size
        rng = np.random.default_rng([self.seed, self._calls, 0])
        self._calls += 1
        domains = self.scheduler.assign(weights, n, rng)
        starts = np.empty(n, dtype=np.int64)
        for d in np.unique(domains):
            where = np.flatnonzero(domains == d)
            starts[where] = self._starts(int(d), where.size)
        self.examples += np.bincount(domains, minlength=len(self.streams))
        return np.stack([domains, starts], axis=1).reshape(n_batches, batch_size, 2)

    def gather(self, plan: np.ndarray) -> np.ndarray:
        """Token windows for a plan (``... x 2`` from :meth:`sample`) → ``... x (seq_len + 1)``."""
        flat = plan.reshape(-1, 2)
        out = np.empty((flat.shape[0], self.seq_len + 1), dtype=np.int64)
        span = np.arange(self.seq_len + 1)
        for d in np.unique(flat[:, 0]):
            where = np.flatnonzero(flat[:, 0] == d)
            out[where] = self.streams[d][flat[where, 1][:, None] + span]
        return out.reshape(*plan.shape[:-1], self.seq_len + 1)

    def state_dict(self) -> dict:
        return dict(
            examples=self.examples.copy(), epoch=self._epoch.copy(), cursor=self._cursor.copy(),
            offset=self._offset.copy(), calls=self._calls,
        )

    def load_state_dict(self, state: dict) -> None:
        self.examples = np.asarray(state["examples"]).copy()
        self._epoch = np.asarray(state["epoch"]).copy()
        self._cursor = np.asarray(state["cursor"]).copy()
        self._offset = np.asarray(state["offset"]).copy()
        self._calls = int(state["calls"])
        # The epoch's window order is a pure function of (seed, domain, epoch): rebuild it.
        for d in range(len(self.streams)):
            if self._epoch[d] > 0:
                rng = np.random.default_rng([self.seed, d, int(self._epoch[d]) - 1, 1])
                self._order[d] = rng.permutation(self.windows_per_epoch(d))
                rng.integers(self.seq_len)
