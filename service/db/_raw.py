"""One SQLAlchemy statement, compiled once, run on a pooled connection's driver (psycopg)
connection (:meth:`~service.db.Database.run_alone`): the worker protocol's common calls on Postgres.

A call through a session costs ~600 us of CPU where its statement costs ~50 (``benchmarks/
engine_calls.py``): the session and the Core execution context, the pool's checkout, and the
``BEGIN`` and ``COMMIT`` that psycopg sends as round trips of their own. Here the statement is the
same SQLAlchemy construct (one source of its SQL), its parameters and returned columns go through
the same column types' processors, and a call of one statement runs it alone (autocommit: Postgres
makes the statement its own transaction, as atomic as one inside ``BEGIN``/``COMMIT``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.sql import ClauseElement


STATEMENT_LISTENERS: list[Callable[[str], None]] = []
"""Called with each statement's SQL before it runs (what SQLAlchemy's ``before_cursor_execute``
is to the other statements): :class:`service.testing.StatementCounter` counts these too."""


class RawStatement:
    """``statement`` compiled for ``engine``'s dialect; :meth:`run` executes it with named
    parameters and returns its rows as tuples, each value through its column type's processor."""

    def __init__(self, statement: ClauseElement, engine: Engine):
        dialect = engine.dialect
        self._compiled = compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._bind: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._bind[name] = processor
        self._result: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in statement.exported_columns]

    def run(self, connection, params: dict[str, Any]) -> list[tuple]:
        """Rows of the statement on ``connection`` (a driver connection), values through their
        column types' result processors."""
        with self.send(connection, params) as cursor:
            return self.rows(cursor)

    def send(self, connection, params: dict[str, Any]):
        """Execute the statement on a cursor of ``connection`` and return the cursor (the caller
        closes it). In the connection's pipeline mode, it is only queued: its rows can be read
        (:meth:`rows`) once the pipeline has synced, so that several statements make one round
        trip (in autocommit mode, one implicit transaction up to the sync)."""
        values = self._compiled.construct_params(params)
        for name, processor in self._bind.items():
            values[name] = processor(values[name])
        for listener in STATEMENT_LISTENERS:
            listener(self.sql)
        cursor = connection.cursor()
        cursor.execute(self.sql, values, prepare=True)
        return cursor

    def rows(self, cursor) -> list[tuple]:
        """The rows of :meth:`send`'s cursor, values through their column types' result processors."""
        rows = cursor.fetchall() if cursor.description is not None else []
        processors = self._result
        return [tuple(v if p is None else p(v) for v, p in zip(row, processors)) for row in rows]
