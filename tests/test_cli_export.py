"""``mixopt export``: the formats' rules, and the exports of a real study (through a real server)
fed to their consumers: ``datasets.interleave_datasets`` for ``hf``; for ``megatron`` the list is
parsed by the rules of Megatron-LM's ``get_blend_from_list`` (Megatron-LM itself does not install
here: it needs CUDA builds of apex/transformer-engine)."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app
from service.cli.export import data_prefixes, hf_probabilities, megatron_data_path, rounded_weights
from workers.client import MixoptClient

from .conftest import ServerProcess

DOMAINS = ["web", "code", "math"]


def parse_megatron_blend(text: str) -> tuple[list[float], list[str]]:
    """Megatron-LM's reading of ``--data-path w1 p1 w2 p2 ...`` (argparse ``nargs='*'`` splits on
    whitespace): an even number of tokens, weights at even positions parse as floats."""
    tokens = text.split()
    assert tokens and len(tokens) % 2 == 0, tokens
    return [float(w) for w in tokens[0::2]], tokens[1::2]


# ---- the formats' rules ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_rounded_weights_sum_to_exactly_one(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 30))
    w = rng.dirichlet(np.full(k, 0.3))
    for digits in (3, 6, 8):
        r = rounded_weights(list(w), digits)
        assert sum(r) == Decimal(1)
        assert max(abs(float(x) - y) for x, y in zip(r, w)) <= k * 10.0 ** -digits


def test_rounded_weights_refuse_bad_weights():
    with pytest.raises(ValueError, match="non-negative"):
        rounded_weights([0.5, -0.1, 0.6], 6)
    with pytest.raises(ValueError, match="positive sum"):
        rounded_weights([0.0, 0.0], 6)


def test_megatron_list_leaves_out_zero_weights_and_keeps_domain_order():
    text = megatron_data_path({"web": 0.6, "code": 0.0, "math": 0.4}, DOMAINS,
                              {d: f"/data/{d}_text_document" for d in DOMAINS})
    weights, prefixes = parse_megatron_blend(text)
    assert prefixes == ["/data/web_text_document", "/data/math_text_document"]
    assert weights == [0.6, 0.4]


def test_megatron_weight_that_rounds_to_zero_is_left_out():
    text = megatron_data_path({"web": 0.99999999, "code": 1e-9, "math": 1e-8 - 1e-9}, DOMAINS,
                              {d: d for d in DOMAINS}, digits=4)
    assert text == "1 web"


def test_data_prefixes_template_map_and_errors():
    assert data_prefixes(["web"], None, None) == {"web": "web_text_document"}
    assert data_prefixes(["web", "code"], "/d/{domain}", {"code": "/other/code"}) == {"web": "/d/web", "code": "/other/code"}
    with pytest.raises(ValueError, match=r"no prefix for domain\(s\) \['web'\]"):
        data_prefixes(["web", "code"], None, {"code": "/c"})
    with pytest.raises(ValueError, match="must contain"):
        data_prefixes(["web"], "/data/web", None)
    with pytest.raises(ValueError, match="whitespace"):
        data_prefixes(["web"], "/my data/{domain}", None)


def test_hf_probabilities_in_domain_order_sum_to_one():
    p = hf_probabilities({"math": 0.2, "web": 0.5, "code": 0.3}, DOMAINS)
    assert p == pytest.approx([0.5, 0.3, 0.2])
    assert abs(sum(p) - 1.0) < 1e-12


# ---- a real study through a real server ---------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    process = ServerProcess(f"sqlite:///{tmp / 'mixopt.db'}", tmp / "server.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def study(server, tmp_path_factory):
    """A started study whose recommendation is its best imported run, ``{web: .7, code: .3, math: 0}``."""
    csv = tmp_path_factory.mktemp("runs") / "runs.csv"
    csv.write_text(
        "mixture_id,fidelity,cost,objective,w_web,w_code,w_math,loss_web,loss_code,loss_math\n"
        "a,big,1,3.0,0.7,0.3,0.0,2.9,3.1,3.0\n"
        "b,big,1,3.2,0.2,0.3,0.5,3.3,3.2,3.1\n"
        "c,big,1,3.1,0.4,0.4,0.2,3.1,3.0,3.2\n"
    )
    with MixoptClient(server.url) as api:
        created = api.create_study({
            "name": "export me", "domains": [{"name": d} for d in DOMAINS],
            "fidelities": [{"name": "small", "cost": 0.1}, {"name": "big", "cost": 1.0, "target": True}],
            "strategy": {"name": "random"}, "budget": {"max_trials": 1}, "dispatch": "ask",
        })
        result = CliRunner().invoke(app, ["runs", "import", str(csv), "--study", str(created["id"]), "--url", server.url])
        assert result.exit_code == 0, result.output
        api.start(created["id"])
        recommendation = api.recommendation(created["id"])
    assert recommendation["mixture"] == pytest.approx({"web": 0.7, "code": 0.3, "math": 0.0})
    return created["id"], recommendation


def export(server, study_id: int, *args: str) -> str:
    result = CliRunner().invoke(app, ["export", str(study_id), "--url", server.url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_json_and_yaml_exports_carry_the_recommendation(server, study):
    study_id, recommendation = study
    doc = json.loads(export(server, study_id, "--format", "json"))
    assert list(doc["mixture"]) == DOMAINS
    assert doc["mixture"] == recommendation["mixture"]
    assert doc["predicted"] == recommendation["predicted"] == 3.0
    assert doc["based_on_trials"] == 3
    assert doc["study"] == {"id": study_id, "name": "export me", "state": "running", "strategy": "random",
                            "objective": doc["study"]["objective"], "target_fidelity": "big"}
    assert doc["study"]["objective"]["kind"] == "mean_loss"
    as_yaml = yaml.safe_load(export(server, study_id, "--format", "yaml"))
    assert {k: v for k, v in as_yaml.items() if k != "exported_at"} == {k: v for k, v in doc.items() if k != "exported_at"}


def test_megatron_export_parses_as_weighted_blend(server, study, tmp_path):
    study_id, recommendation = study
    text = export(server, study_id, "--format", "megatron", "--prefix-template", "/data/pile/{domain}_text_document")
    weights, prefixes = parse_megatron_blend(text)
    assert prefixes == ["/data/pile/web_text_document", "/data/pile/code_text_document"]  # math has weight 0
    assert sum(Decimal(w) for w in text.split()[0::2]) == 1
    assert weights == pytest.approx([recommendation["mixture"]["web"], recommendation["mixture"]["code"]], abs=1e-8)

    mapping = tmp_path / "prefixes.json"
    mapping.write_text(json.dumps({"web": "/cc/en_text_document", "code": "/gh/py_text_document"}))
    out = tmp_path / "blend.txt"
    export(server, study_id, "--format", "megatron", "--prefix-map", str(mapping), "-o", str(out))
    assert parse_megatron_blend(out.read_text())[1] == ["/cc/en_text_document", "/gh/py_text_document"]


def test_hf_export_drives_interleave_datasets(server, study):
    from datasets import Dataset, interleave_datasets

    study_id, recommendation = study
    doc = json.loads(export(server, study_id, "--format", "hf"))
    assert doc["domains"] == DOMAINS
    n = 20_000
    sources = [Dataset.from_dict({"domain": [d] * n, "i": list(range(n))}) for d in doc["domains"]]
    mixed = interleave_datasets(sources, probabilities=doc["probabilities"], seed=0, stopping_strategy="first_exhausted")
    counts = Counter(mixed["domain"])
    total = sum(counts.values())
    for domain in DOMAINS:
        assert counts[domain] / total == pytest.approx(recommendation["mixture"][domain], abs=0.01), counts
    assert counts["math"] == 0


def test_export_errors_name_the_problem(server, study, tmp_path):
    study_id, _ = study
    result = CliRunner().invoke(app, ["export", "999", "--url", server.url])
    assert result.exit_code == 1 and "404" in result.output and "999" in result.output
    mapping = tmp_path / "partial.json"
    mapping.write_text(json.dumps({"web": "/w"}))
    result = CliRunner().invoke(app, ["export", str(study_id), "--url", server.url, "-f", "megatron",
                                      "--prefix-map", str(mapping)])
    assert result.exit_code == 2 and "code" in result.output and "--prefix-map" in result.output
    mapping.write_text(json.dumps({"web": "/w", "nope": "/n"}))
    result = CliRunner().invoke(app, ["export", str(study_id), "--url", server.url, "-f", "megatron",
                                      "--prefix-map", str(mapping)])
    assert result.exit_code == 2 and "nope" in result.output
    result = CliRunner().invoke(app, ["export", str(study_id), "--url", server.url, "-f", "csv"])
    assert result.exit_code == 2 and "csv" in result.output


def test_export_with_auth_needs_a_token(tmp_path):
    db = f"sqlite:///{tmp_path / 'auth.db'}"
    process = ServerProcess(db, tmp_path / "server.log", MIXOPT_AUTH_ENABLED="true", MIXOPT_ADMIN_TOKEN="admin-secret-token")
    process.start()
    try:
        result = CliRunner().invoke(app, ["export", "1", "--url", process.url])
        assert result.exit_code == 1 and "401" in result.output
        result = CliRunner().invoke(app, ["export", "1", "--url", process.url, "--token", "admin-secret-token"])
        assert result.exit_code == 1 and "404" in result.output  # authenticated; there is no study 1
    finally:
        process.stop()
