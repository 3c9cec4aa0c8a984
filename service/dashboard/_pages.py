"""The dashboard's HTML pages: thin server-rendered shells (Jinja2) that the page scripts fill
from ``/dashboard/api``, plus the token login for browsers when auth is enabled."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from .. import auth
from ..api.deps import DbDep, SettingsDep, StudyId, TrialId
from ..errors import Forbidden, NotFound, Unauthorized
from ._assets import asset_url
from ._auth import COOKIE, auth_required, check_read
from ._queries import check_study, check_trial, dashboard_studies

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(prefix="/dashboard", include_in_schema=False)

COOKIE_MAX_AGE_S = 7 * 24 * 3600
MAX_LOGIN_BODY = 8192


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/dashboard"


def _render(request: Request, settings, template: str, status_code: int = 200, **context) -> HTMLResponse:
    base = _base(request)
    return templates.TemplateResponse(
        request, template, {"base": base, "asset": lambda name: asset_url(base, name),
                            "auth_enabled": auth_required(settings), **context},
        status_code=status_code, headers={"Cache-Control": "no-store"},
    )


def _page(request: Request, db, settings, template: str, check=None, load=None, **context) -> Response:
    """Render ``template`` for a reader; send others to the login form, unknown ids to a 404 page.
    ``check()`` raises ``NotFound`` for an unknown id; ``load()`` returns more template context
    (data rendered into the first view)."""
    try:
        check_read(db, settings, None, request)
        if check is not None:
            check()
        if load is not None:
            context.update(load())
    except (Unauthorized, Forbidden):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{_base(request)}/login?next={quote(target)}", status_code=303)
    except NotFound as e:
        return _render(request, settings, "error.html", status_code=404, title="Not found", message=e.message)
    return _render(request, settings, template, **context)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    # The first view is in the HTML (a page read before its script has run, a screenshot, a
    # browser without JavaScript shows the studies); the script then keeps it up to date.
    return _page(request, db, settings, "studies.html", title="Studies", nav="studies",
                 load=lambda: {"rows": (rows := dashboard_studies(db)), "updated": rows.server_time})


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(study_id: StudyId, request: Request, db: DbDep, settings: SettingsDep) -> Response:
    return _page(request, db, settings, "study.html", check=lambda: check_study(db, study_id),
                 title=f"Study {study_id}", nav="studies", study_id=study_id)


@router.get("/trials/{trial_id}", response_class=HTMLResponse)
def trial_page(trial_id: TrialId, request: Request, db: DbDep, settings: SettingsDep) -> Response:
    return _page(request, db, settings, "trial.html", check=lambda: check_trial(db, trial_id),
                 title=f"Trial {trial_id}", nav="studies", trial_id=trial_id)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    return _page(request, db, settings, "workers.html", title="Workers", nav="workers")


def _safe_next(request: Request, target: str | None) -> str:
    base = _base(request)
    if target and target.startswith(base) and not target.startswith("//") and "\\" not in target:
        return target
    return base + "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    if not auth_required(settings):
        return RedirectResponse(_safe_next(request, next), status_code=303)
    return _render(request, settings, "login.html", title="Sign in", next=_safe_next(request, next), error=None)


def check_same_origin(request: Request) -> None:
    """Refuse a form post from another site (login/logout CSRF: a foreign page signing the victim
    in with the attacker's token, or out). Browsers send ``Origin`` (or at least ``Referer`` and
    ``Sec-Fetch-Site``) with every form post; it must name this server."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Forbidden("cross-site form posts are refused")
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return  # not a browser (curl, scripts): no ambient cookie to abuse
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if source == "null" or urlsplit(source).netloc != host:
        raise Forbidden("cross-site form posts are refused")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """Check a pasted API token (read scope) and keep it in an HttpOnly cookie."""
    check_same_origin(request)
    raw = await request.body()
    form = parse_qs(raw[:MAX_LOGIN_BODY].decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next(request, (form.get("next") or [None])[0])
    if not auth_required(settings):
        return RedirectResponse(target, status_code=303)
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        auth.authorize(db, token, "read", admin)
    except (Unauthorized, Forbidden) as e:
        return _render(request, settings, "login.html", status_code=e.status_code, title="Sign in", next=target,
                       error=e.message)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE_S, path=_base(request), httponly=True,
                        samesite="strict", secure=settings.secure_cookies or request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    check_same_origin(request)
    response = RedirectResponse(f"{_base(request)}/login", status_code=303)
    response.delete_cookie(COOKIE, path=_base(request))
    return response
