"""Authentication: API tokens (created and revoked from the CLI, with nested scopes ``read`` <
``write`` < ``admin``) and the administration of worker tokens (issued at registration by the
engine, listed and revoked here).

This package sits above the engine: it uses the engine's worker-token helpers (hashing, the
join-secret fingerprint, a token's state) and its lease sweeper, and the engine never imports it,
so that the API, the dashboard and the CLI share one check without an import cycle.
"""

from ._api_tokens import SCOPES, authorize, create_token, list_tokens, revoke_token, token_known
from ._worker_tokens import WorkerToken, list_worker_tokens, revoke_worker

__all__ = [
    "SCOPES",
    "WorkerToken",
    "authorize",
    "create_token",
    "list_tokens",
    "list_worker_tokens",
    "revoke_token",
    "revoke_worker",
    "token_known",
]
