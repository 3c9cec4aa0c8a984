"""Every endpoint of the REST API has a method in the Python client (``workers.client``) that
calls it: the client's calls are read from its source and matched against the app's OpenAPI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import workers.client
from service.app import create_app
from service.settings import Settings

CLIENT_SOURCE = Path(workers.client.__file__)

PRIVATE_PREFIXES = ("/dashboard/",)
"""The dashboard's own JSON feeds its pages; it is not part of the REST contract (DESIGN.md section 6)."""


def _template(node: ast.expr) -> str | None:
    """A path argument as a template with ``{}`` for each placeholder (``f"/a/{x}"`` -> ``/a/{}``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def client_calls() -> dict[tuple[str, str], str]:
    """``{(METHOD, path template): client method name}`` for every ``self.request(...)`` call."""
    calls = {}
    for cls in ast.walk(ast.parse(CLIENT_SOURCE.read_text())):
        if not (isinstance(cls, ast.ClassDef) and cls.name == "MixoptClient"):
            continue
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef) or fn.name == "request":
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "request"
                        and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)):
                    path = _template(node.args[1])
                    if path is not None:
                        calls[(node.args[0].value.upper(), path)] = fn.name
    return calls


def api_operations(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'openapi.db'}"), migrate=False)
    ops = set()
    for path, methods in app.openapi()["paths"].items():
        if path.startswith(PRIVATE_PREFIXES):
            continue
        for method in methods:
            ops.add((method.upper(), re.sub(r"\{[^}]+\}", "{}", path)))
    return ops


def test_every_api_operation_has_a_client_method(tmp_path):
    ops = api_operations(tmp_path)
    calls = client_calls()
    assert len(ops) >= 25, ops  # the v1 contract: studies, trials, workers, leases, health
    missing = sorted(ops - set(calls))
    assert not missing, f"endpoints without a MixoptClient method: {missing}"


def test_client_calls_only_existing_endpoints(tmp_path):
    stale = {call: name for call, name in client_calls().items() if call not in api_operations(tmp_path)}
    assert not stale, f"client methods calling endpoints the API does not have: {stale}"


def test_every_client_method_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "client.md").read_text()
    public = sorted({name for name in client_calls().values()} | {"iter_trials"})
    undocumented = [name for name in public if f"{name}(" not in doc]
    assert not undocumented, f"docs/client.md does not show {undocumented}"


def _python_block_after(doc: str, heading: str) -> str:
    section = doc.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_ask_tell_example_of_the_docs_runs(server_factory, sqlite_url, tmp_path):
    """The documented ask/tell loop, run as written against a real server."""
    import os
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "client.md").read_text()
    script = tmp_path / "ask_tell.py"
    script.write_text(_python_block_after(doc, "### Ask/tell from your own trainer"))
    server = server_factory(sqlite_url).start()
    out = subprocess.run([sys.executable, str(script)], env={**os.environ, "MIXOPT_URL": server.url},
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from workers.client import MixoptClient

    with MixoptClient(server.url) as api:
        (study,) = api.list_studies()["items"]
    assert study["state"] == "completed"
    assert study["trial_counts"]["completed"] == 8
