"""The dashboard of explored mixtures, served by the API app under ``/dashboard``: a studies list,
a study page (best-so-far against cost, the recommendation and its history, every trial's
mixture, parallel coordinates, predicted vs actual, cost per fidelity, Aioli schedules, a
sortable trials table with CSV/JSON export), a trial page and a workers page, all live-updating.

Pages are server-rendered shells filled by small scripts with Plotly (served from the installed
``plotly`` package: no CDN, no build step) from the read-only data endpoints under
``/dashboard/api``. Read access follows the API's auth settings; browsers present a token
through the login form, which keeps it in an HttpOnly cookie.

The read models behind the endpoints (``_queries``) live here, next to their only reader, on top
of the engine's lookups; each owns its read transaction, so pages and endpoints open no session.
"""

from fastapi import APIRouter

from ._api import router as api_router
from ._assets import router as assets_router
from ._auth import COOKIE, check_read, dashboard_read
from ._pages import router as pages_router

router = APIRouter()
router.include_router(api_router)
router.include_router(assets_router)
router.include_router(pages_router)

__all__ = ["COOKIE", "check_read", "dashboard_read", "router"]
