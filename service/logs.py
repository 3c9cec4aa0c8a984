"""Structured logging: stdlib ``logging`` rendered by structlog, as console text or JSON lines.
Fields passed with ``extra=`` (study_id, trial_id, ...) appear as key/value pairs.

Secrets never reach a log line: every record passes :class:`RedactSecrets`, which masks API and
worker tokens (``mxt_...``, ``mxw_...``), bearer credentials, the values of query parameters
with secret-sounding names (uvicorn's access log prints query strings), and the literal secrets
registered with :func:`register_secret` (the admin token, the join secret).
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extra_fields(_, __, event_dict: dict) -> dict:
    record = event_dict.get("_record")
    if record is not None:
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in event_dict:
                event_dict[key] = value
    return event_dict


MASK = "***"
_TOKEN = re.compile(r"\b(mx[tw]_)[A-Za-z0-9_\-]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:token|access_token|api_key|apikey|key|secret|join_secret|password|auth|authorization)=)[^&\s\"#]*"
)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this exact string wherever it would appear in a log line (only strings of 8+ characters:
    shorter ones would mask ordinary words)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every secret masked."""
    text = _TOKEN.sub(lambda m: m.group(1) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """Formats the record's message once and masks the secrets in it (and in its exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the logger's problem, not a reason to leak
            message = str(record.msg)
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info:  # the traceback goes into the message, masked, instead of being rendered raw
            trace = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.msg, record.args = f"{clean}\n{redact(trace)}", None
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _extra_fields,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the worker's log
