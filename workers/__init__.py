"""Worker daemons that lease trials from the server, run them and report.
They talk to the server only over HTTP, through :class:`workers.client.MixoptClient`."""

from .client import ApiError, MixoptClient, ServerUnavailable

__all__ = ["ApiError", "MixoptClient", "ServerUnavailable"]
