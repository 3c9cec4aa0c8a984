"""Errors the engine raises and the API turns into HTTP answers."""

from __future__ import annotations

from collections.abc import Sequence


class MixoptError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(MixoptError):
    """Invalid input (422). ``loc`` names the offending field as FastAPI does, e.g.
    ``("body", "losses", "web")``."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], message: str, kind: str = "value_error"):
        super().__init__(message)
        self.loc = tuple(loc)
        self.kind = kind

    def detail(self) -> list[dict]:
        field = ".".join(str(p) for p in self.loc[1:]) or str(self.loc[0])
        return [{"loc": list(self.loc), "msg": f"{field}: {self.message}", "type": self.kind}]


class NotFound(MixoptError):
    status_code = 404

    def __init__(self, what: str, ident: object):
        super().__init__(f"{what} {ident} not found")


class Conflict(MixoptError):
    status_code = 409


class Forbidden(MixoptError):
    status_code = 403


class Unauthorized(MixoptError):
    status_code = 401
