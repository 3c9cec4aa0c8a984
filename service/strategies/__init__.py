"""Search strategies: pure functions of (search space, history) to proposals and a recommendation.

Nothing here touches the database, the API or the workers, so every strategy can be tested and
benchmarked offline. Importing this package registers every built-in strategy.
"""

from ._admire import AdmireStrategy
from ._base import (
    BaseOnlineStrategy,
    BaseStrategy,
    History,
    Proposal,
    Recommendation,
    Segment,
    SegmentRecord,
    StrategyParams,
    TrialRecord,
    available_strategies,
    create_strategy,
    get_strategy_class,
    register,
)
from ._baselines import FixedStrategy, NaturalStrategy, RandomStrategy, UniformStrategy
from ._regmix import RegMixStrategy
from ._sampling import sample_regmix
from ._space import Domain, Fidelity, MixtureSpace, Pool, SearchSpace, make_space
from .aioli import AioliStrategy, step_budget

__all__ = [
    "AdmireStrategy",
    "AioliStrategy",
    "BaseOnlineStrategy",
    "BaseStrategy",
    "Domain",
    "Fidelity",
    "FixedStrategy",
    "History",
    "MixtureSpace",
    "NaturalStrategy",
    "Pool",
    "Proposal",
    "RandomStrategy",
    "Recommendation",
    "RegMixStrategy",
    "SearchSpace",
    "Segment",
    "SegmentRecord",
    "StrategyParams",
    "TrialRecord",
    "UniformStrategy",
    "available_strategies",
    "create_strategy",
    "get_strategy_class",
    "make_space",
    "register",
    "sample_regmix",
    "step_budget",
]
