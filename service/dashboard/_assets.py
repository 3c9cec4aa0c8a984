"""The dashboard's static files, served from the package (and Plotly's bundle from the installed
``plotly`` package): no CDN, no build step. Each URL carries a content hash, so browsers may
cache for a year; bodies are gzipped once, in memory, for clients that accept it."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

import plotly
from fastapi import APIRouter, Request, Response

from ..errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

router = APIRouter(prefix="/dashboard/static", include_in_schema=False)


def _files() -> dict[str, Path]:
    files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
    files["plotly.min.js"] = PLOTLY_JS
    return files


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[bytes, bytes, str, str]:
    """(body, gzipped body, media type, content hash) of a static file."""
    path = _files().get(name)
    if path is None:
        raise NotFound("static file", name)
    body = path.read_bytes()
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".js"):
        media = "text/javascript"
    return body, gzip.compress(body, 6), media, hashlib.sha256(body).hexdigest()[:12]


def asset_url(base: str, name: str) -> str:
    """The URL of a static file under ``base`` (the dashboard's root), with its content hash."""
    return f"{base}/static/{name}?v={_load(name)[3]}"


@router.get("/{name}")
def static_file(name: str, request: Request) -> Response:
    body, zipped, media, digest = _load(name)
    headers = {"Cache-Control": "public, max-age=31536000, immutable" if request.query_params.get("v") == digest
               else "no-cache", "ETag": f'"{digest}"', "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == f'"{digest}"':
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", "") and len(zipped) < len(body):
        headers["Content-Encoding"] = "gzip"
        return Response(zipped, media_type=media, headers=headers)
    return Response(body, media_type=media, headers=headers)
