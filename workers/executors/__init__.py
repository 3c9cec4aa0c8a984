"""Executors run one leased trial: the built-in proxy trainer, any user command, or (for protocol
tests only) a synthetic function of the mixture."""

from ._base import BaseExecutor, ExecResult, RunContext, Task
from ._command import CommandExecutor, CommandFailed
from ._proxy import ProxyExecutor
from ._synthetic import SyntheticExecutor, synthetic_losses

__all__ = [
    "BaseExecutor",
    "CommandExecutor",
    "CommandFailed",
    "ExecResult",
    "ProxyExecutor",
    "RunContext",
    "SyntheticExecutor",
    "Task",
    "synthetic_losses",
]
