"""The FastAPI application: the REST API's routers (:mod:`service.api`) and the dashboard's
(:mod:`service.dashboard`), the engine thread in the lifespan. It sits above both, so that neither
imports the other's package."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import dashboard, metrics
from .db import Database, upgrade
from .engine import EngineRunner, forget_worker
from .errors import InputError, MixoptError
from .logs import configure_logging, register_secret
from .settings import Settings, check_secrets, get_settings
from .api._fastlane import install_fast_routes
from .api._guard import Guard
from .api._limits import BodySizeLimit
from .api._wakeup import Wakeup
from .api.routes import health, leases, studies, trials, workers
from .api.routes import metrics as metrics_route

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 10_000
"""The server's first garbage-collector threshold (Python's default: 700 allocations). A request
allocates and frees hundreds of objects, so at 700 a saturated server collected ~30 times a
second: 1.3 s of CPU per 33 s and ~20 pauses over 10 ms (up to 39 ms). At 10,000, 5 collections
in the same window (``benchmarks/service_load.py``; docs/benchmarks.md). Cyclic garbage still
goes at most 10,000 objects later."""

STRATEGY_LIBRARIES = ("torch", "botorch", "gpytorch", "scipy.stats")
"""What the strategies compute with, imported where they use it: imported at the server's start,
they were 2.6 s of its 3.9 s of imports. The serving app imports them in the background once it is
up (:class:`_HeapFreezer`): `mixopt server` answers within about 2 s instead of 4-5."""

__all__ = ["create_app"]


class _HeapFreezer:
    """``gc.freeze()`` the long-lived heap at start, and again once :data:`STRATEGY_LIBRARIES`
    are imported in the background; :meth:`stop` unfreezes it for good. Unfrozen, torch's ~180k
    objects made every full collection a ~100 ms pause in whichever request triggered it (frozen,
    collections skip them). Objects of requests in flight at the second freeze stay frozen: their
    cycles, if any, are never collected (once per process, a few kB)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving = True
        gc.freeze()
        threading.Thread(target=self._import_then_freeze, name="mixopt-import", daemon=True).start()

    def _import_then_freeze(self) -> None:
        try:
            for name in STRATEGY_LIBRARIES:
                importlib.import_module(name)
        except ImportError:  # a missing library fails the strategy that needs it, not the server
            log.exception("could not import the strategies' libraries")
        with self._lock:
            if self._serving:
                gc.freeze()

    def stop(self) -> None:
        with self._lock:
            self._serving = False
            gc.unfreeze()


def create_app(settings: Settings | None = None, *, migrate: bool | None = None) -> FastAPI:
    """Build the app. ``migrate`` runs the Alembic migrations at start (default: the
    ``auto_migrate`` setting), so that ``mixopt server`` works on a fresh SQLite file."""
    settings = settings or get_settings()
    check_secrets(settings)
    if not logging.getLogger().handlers:  # a process of `mixopt server --workers N` starts bare
        configure_logging(settings.log_level, settings.log_json)
    register_secret(settings.admin_token.get_secret_value() if settings.admin_token else None)
    register_secret(settings.join_secret.get_secret_value() if settings.join_secret else None)
    register_secret(settings.metrics_token.get_secret_value() if settings.metrics_token else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if migrate if migrate is not None else settings.auto_migrate:
            upgrade(settings.database_url)
        db = Database(settings.database_url, settings.db_pool_size, settings.db_threads)
        wakeup = Wakeup(asyncio.get_running_loop())
        runner = EngineRunner(db, sweep_interval_s=settings.sweep_interval_s,
                              recommend_interval_s=settings.recommend_interval_s,
                              strategy_slow_s=settings.strategy_slow_s,
                              strategy_timeout_s=settings.strategy_timeout_s, on_change=wakeup.fire)
        app.state.db, app.state.runner, app.state.settings, app.state.wakeup = db, runner, settings, wakeup
        metrics.instrument_pool(db)
        runner.start()
        stop_listening = threading.Event()
        db.listen_work(wakeup.fire, stop_listening, on_worker_change=forget_worker)
        # The imports leave hundreds of thousands of long-lived objects, and a full garbage
        # collection walked them all: a pause of 100 ms or more in whichever request triggered it.
        # Frozen, collections skip them; collections are rarer too (GC_YOUNG_THRESHOLD). Both
        # undone at shutdown, so that apps made and dropped in one process (tests) leak nothing.
        freezer = _HeapFreezer()
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            freezer.stop()
            stop_listening.set()
            runner.stop()
            db.dispose()
            metrics.mark_process_dead()

    app = FastAPI(
        title="mixopt",
        version="0.1.0",
        summary="Data-mixture search for LLM pretraining: studies, trials, workers and leases.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is not echoed: it may be huge, or NaN, which JSON cannot carry.
        detail = []
        for err in exc.errors():
            loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
            field = ".".join(str(p) for p in loc[1:]) or (str(loc[0]) if loc else "body")
            detail.append({"loc": loc, "msg": f"{field}: {err.get('msg', '')}", "type": err.get("type", "value_error")})
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": exc.detail()})

    @app.exception_handler(MixoptError)
    async def _mixopt_error(_: Request, exc: MixoptError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})

    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database is down, restarting or out of connections: a 503 tells clients (the worker
        # daemon retries with backoff) that the same call may succeed later. No stack, no SQL.
        # The driver's message (host, port, database names) goes to the log only, never to callers.
        orig = getattr(exc, "orig", None) or exc
        reason = (str(orig).strip().splitlines() or [""])[0][:300]
        log.warning("database unavailable: %s: %s", type(orig).__name__, reason)
        return JSONResponse(status_code=503, headers={"Retry-After": "1"},
                            content={"detail": "database unavailable; retry later"})

    for unavailable in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(unavailable, _database_unavailable)

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await _database_unavailable(request, exc)
        raise exc

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(Guard, settings=settings)  # outermost: lockout and token check before any body
    for module in (health, studies, trials, workers, leases, metrics_route):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    if settings.worker_fast_path:
        install_fast_routes(app)
    return app
