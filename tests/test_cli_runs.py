"""``mixopt runs import``: reading pool CSVs with loss columns, the objective rule, and imports
into studies on a real server, up to the RegMix pool warm-starting a RegMix study."""

from __future__ import annotations

import time

import numpy as np
import pytest
from typer.testing import CliRunner

from service.benchmarking import load_pool, regmix_pool, write_pool
from service.cli import app
from service.cli.runs import plan_import, read_runs, single_loss_domain
from workers.client import MixoptClient

from .conftest import ServerProcess

HEADER = "mixture_id,fidelity,cost,objective,w_web,w_code"


def study_doc(objective: dict, fidelities=("small", "big")) -> dict:
    """A study as ``GET /studies/{id}`` returns it (the fields the import reads)."""
    return {"id": 7, "domains": [{"name": "web"}, {"name": "code"}],
            "objective": {"kind": "mean_loss", "domains": None, "domain": None, "weights": None, "name": None,
                          "direction": "minimize", **objective},
            "fidelities": [{"name": f, "cost": 1.0 if f == fidelities[-1] else 0.1, "target": f == fidelities[-1]}
                           for f in fidelities]}


def write(tmp_path, text: str):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    return path


# ---- reading --------------------------------------------------------------------------------------

def test_read_runs_without_loss_columns_is_the_pool_reader(tmp_path):
    path = write(tmp_path, f"{HEADER}\nm1,small,0.1,3.5,0.25,0.75\nm1,big,1,3.0,0.25,0.75\n")
    pool, losses = read_runs(path)
    assert losses == {}
    assert pool.domains == ("web", "code") and [f.name for f in pool.fidelities] == ["small", "big"]
    np.testing.assert_array_equal(pool.objectives, load_pool(path).objectives)


def test_read_runs_with_loss_columns(tmp_path):
    path = write(tmp_path, f"{HEADER},loss_web,loss_code\nm1,big,1,3.0,0.25,0.75,2.9,3.1\nm2,big,1,3.2,0.5,0.5,,3.2\n")
    pool, losses = read_runs(path)
    assert losses == {("m1", "big"): {"web": 2.9, "code": 3.1}, ("m2", "big"): {"code": 3.2}}
    assert pool.mixture_ids == ("m1", "m2")


def test_read_runs_errors_name_file_line_and_column(tmp_path):
    path = write(tmp_path, f"{HEADER},loss_web\nm1,big,1,3.0,0.25,0.75,2.9\nm2,big,1,3.2,0.5,0.5,high\n")
    with pytest.raises(ValueError, match=r"runs.csv:3: column 'loss_web' is not a number: 'high'"):
        read_runs(path)
    path = write(tmp_path, f"{HEADER},loss_web\nm1,big,1,3.0,0.25,0.5,2.9\n")
    with pytest.raises(ValueError, match=r"runs.csv:2: weights sum to 0.75") as e:
        read_runs(path)
    assert str(path) in str(e.value)  # the user's file, not the reader's temporary copy


# ---- the objective rule -----------------------------------------------------------------------------

def test_single_loss_domain():
    assert single_loss_domain({"kind": "domain_loss", "domain": "web"}, ["web", "code"]) == ("web", 1.0)
    assert single_loss_domain({"kind": "mean_loss", "domains": ["code"]}, ["web", "code"]) == ("code", 1.0)
    assert single_loss_domain({"kind": "mean_loss"}, ["web"]) == ("web", 1.0)
    assert single_loss_domain({"kind": "mean_loss"}, ["web", "code"]) is None
    assert single_loss_domain({"kind": "weighted_loss", "weights": {"web": 2.0}}, ["web", "code"]) == ("web", 2.0)
    assert single_loss_domain({"kind": "weighted_loss", "weights": {"web": 1.0, "code": 1.0}}, ["web", "code"]) is None
    assert single_loss_domain({"kind": "metric", "name": "acc"}, ["web"]) is None


def test_plan_objective_only_into_a_one_domain_objective(tmp_path):
    pool, losses = read_runs(write(tmp_path, f"{HEADER}\nm1,small,0.1,3.5,0.25,0.75\nm1,big,1,3.0,0.25,0.75\n"))
    bodies, notes = plan_import(pool, losses, study_doc({"kind": "weighted_loss", "weights": {"code": 2.0}}))
    assert notes == []
    assert [b["fidelity"] for b in bodies] == ["small", "big"]
    assert bodies[1] == {"mixture": {"web": 0.25, "code": 0.75}, "fidelity": "big",
                         "result": {"losses": {"code": 1.5}, "metrics": {"objective": 3.0}}}


def test_plan_refuses_objectives_the_rows_cannot_satisfy(tmp_path):
    pool, losses = read_runs(write(tmp_path, f"{HEADER}\nm1,big,1,3.0,0.25,0.75\n"))
    with pytest.raises(ValueError, match="no loss_<domain> columns.*domain_loss"):
        plan_import(pool, losses, study_doc({}))
    with pytest.raises(ValueError, match="metric objective needs loss_<domain> columns"):
        plan_import(pool, losses, study_doc({"kind": "metric", "name": "objective"}))
    with pytest.raises(ValueError, match="metric 'acc'"):
        plan_import(pool, losses, study_doc({"kind": "metric", "name": "acc"}))
    pool, losses = read_runs(write(tmp_path, f"{HEADER},loss_web\nm1,big,1,3.0,0.25,0.75,2.9\n"))
    with pytest.raises(ValueError, match=r"mixture 'm1' at fidelity 'big': no loss for \['code'\]"):
        plan_import(pool, losses, study_doc({}))


def test_plan_with_loss_columns_notes_a_different_objective(tmp_path):
    pool, losses = read_runs(write(tmp_path, f"{HEADER},loss_web,loss_code\nm1,big,1,3.0,0.25,0.75,2.0,3.0\n"))
    bodies, notes = plan_import(pool, losses, study_doc({}))
    assert bodies[0]["result"] == {"losses": {"web": 2.0, "code": 3.0}, "metrics": {"objective": 3.0}}
    assert len(notes) == 1 and "differs from the CSV's objective" in notes[0]


def test_plan_checks_domains_fidelities_and_costs(tmp_path):
    pool, losses = read_runs(write(tmp_path, f"{HEADER}\nm1,tiny,0.2,3.5,0.25,0.75\nm1,big,1,3.0,0.25,0.75\n"))
    study = study_doc({"kind": "domain_loss", "domain": "web"})
    with pytest.raises(ValueError, match=r"fidelity\(ies\) \['tiny'\].*--fidelity CSV_NAME=STUDY_NAME"):
        plan_import(pool, losses, study)
    bodies, notes = plan_import(pool, losses, study, {"tiny": "small"})
    assert [b["fidelity"] for b in bodies] == ["small", "big"]
    assert len(notes) == 1 and "costs 0.2 in the CSV but 'small' costs 0.1" in notes[0]
    pool, losses = read_runs(write(tmp_path, "mixture_id,fidelity,cost,objective,w_web,w_math\nm1,big,1,3,0.5,0.5\n"))
    with pytest.raises(ValueError, match=r"missing w_ columns for \['code'\].*lacks: \['math'\]"):
        plan_import(pool, losses, study)


# ---- imports through a real server -----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    process = ServerProcess(f"sqlite:///{tmp / 'mixopt.db'}", tmp / "server.log").start()
    yield process
    process.stop()


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_import_creates_completed_trials_once(server, tmp_path):
    path = write(tmp_path, f"{HEADER},loss_web,loss_code\n"
                           "m1,small,0.1,3.5,0.25,0.75,3.4,3.6\nm1,big,1,3.0,0.25,0.75,2.9,3.1\nm2,big,1,3.1,0.5,0.5,3.0,3.2\n")
    with MixoptClient(server.url) as api:
        study = api.create_study({
            "name": "warm", "domains": [{"name": "web"}, {"name": "code"}],
            "fidelities": [{"name": "small", "cost": 0.1}, {"name": "big", "cost": 1.0, "target": True}],
            "strategy": {"name": "random"}, "budget": {"max_trials": 2}, "parallelism": 2,
        })
        sid = str(study["id"])
        dry = invoke("runs", "import", str(path), "--study", sid, "--url", server.url, "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert "would import 3 run(s)" in dry.stdout and api.list_trials(study["id"])["total"] == 0

        first = invoke("runs", "import", str(path), "--study", sid, "--url", server.url)
        assert first.exit_code == 0, first.output
        assert "imported 3 run(s)" in first.stdout and "1 at small, 2 at big" in first.stdout
        trials = list(api.iter_trials(study["id"]))
        assert [t["state"] for t in trials] == ["completed"] * 3
        assert [t["objective"] for t in trials] == pytest.approx([3.5, 3.0, 3.1])
        assert trials[1]["result"]["losses"] == {"web": 2.9, "code": 3.1}
        assert trials[1]["result"]["metrics"] == {"objective": 3.0}
        assert all(t["strategy_meta"]["imported"] for t in trials)

        again = invoke("runs", "import", str(path), "--study", sid, "--url", server.url)
        assert again.exit_code == 0, again.output
        assert "imported 0 run(s)" in again.stdout and "3 already there" in again.stdout
        assert api.list_trials(study["id"])["total"] == 3

        # imported runs are not part of the budget: the study still creates its own 2 trials
        api.start(study["id"])
        deadline = time.monotonic() + 30  # the engine queues a started study's trials in the background
        while api.get_study(study["id"])["trial_counts"]["queued"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.get_study(study["id"])["trial_counts"]["queued"] == 2


def test_import_errors(server, tmp_path):
    path = write(tmp_path, f"{HEADER}\nm1,big,1,3.0,0.25,0.75\n")
    result = invoke("runs", "import", str(path), "--study", "999", "--url", server.url)
    assert result.exit_code == 1 and "404" in result.output
    with MixoptClient(server.url) as api:
        study = api.create_study({
            "name": "mean", "domains": [{"name": "web"}, {"name": "code"}],
            "fidelities": [{"name": "big", "cost": 1.0, "target": True}],
            "strategy": {"name": "random"}, "budget": {"max_trials": 2},
        })
    result = invoke("runs", "import", str(path), "--study", str(study["id"]), "--url", server.url)
    assert result.exit_code == 2 and "domain_loss" in result.output
    result = invoke("runs", "import", str(path), "--study", str(study["id"]), "--url", server.url, "--fidelity", "big")
    assert result.exit_code == 2 and "CSV_NAME=STUDY_NAME" in result.output
    result = invoke("runs", "import", str(tmp_path / "nope.csv"), "--study", str(study["id"]), "--url", server.url)
    assert result.exit_code == 2 and "nope.csv" in result.output


def _expected_recommendation(study: dict, trials: list[dict]):
    """RegMix fitted, in this process, on the study's completed runs."""
    from service.strategies import Domain, Fidelity, History, RegMixStrategy, TrialRecord, make_space

    names = [d["name"] for d in study["domains"]]
    space = make_space([Domain(n) for n in names], [Fidelity(f["name"], f["cost"], f["target"]) for f in study["fidelities"]])
    records = tuple(
        TrialRecord(trial_id=t["id"], weights=np.array([t["mixture"][n] for n in names]), fidelity=t["fidelity"],
                    state="completed", objective=t["objective"], losses=t["result"]["losses"], pool_index=None,
                    meta=t["strategy_meta"])
        for t in trials if t["state"] == "completed"
    )
    return RegMixStrategy(space, study["strategy"]["params"], seed=study["seed"]).recommend(History(records))


def test_regmix_pool_import_warm_starts_a_regmix_study(server, tmp_path):
    """The released RegMix runs (768 at 1m, 256 at 60m; objective: the Pile-CC loss) imported into a
    RegMix study: its recommendation is RegMix fitted on exactly those runs."""
    pool = regmix_pool()
    path = write_pool(pool, tmp_path / "regmix.csv")
    body = {
        "name": "regmix warm start", "domains": [{"name": d} for d in pool.domains],
        "objective": {"kind": "domain_loss", "domain": "pile_cc"},
        "fidelities": [{"name": "1m", "cost": 1 / 60}, {"name": "60m", "cost": 1.0, "target": True}],
        # simulations and boosting rounds cut from the paper's 1e6 and 1000 (x0.01 rate) to keep the test short
        "strategy": {"name": "regmix", "params": {"n_initial": 2, "n_simulated": 2000, "num_rounds": 100,
                                                  "learning_rate": 0.05, "cv_folds": 2, "refit_every": 1}},
        "budget": {"max_trials": 2}, "dispatch": "ask",
    }
    with MixoptClient(server.url, timeout=300) as api:
        study = api.create_study(body)
        result = invoke("runs", "import", str(path), "--study", str(study["id"]), "--url", server.url)
        assert result.exit_code == 0, result.output
        assert "imported 1024 run(s)" in result.stdout and "768 at 1m, 256 at 60m" in result.stdout

        # the study holds the pool's runs: same mixtures (up to the server's renormalisation), objectives, fidelities
        trials = list(api.iter_trials(study["id"]))
        rows = [(f.name, i) for j, f in enumerate(pool.fidelities) for i in range(len(pool.mixture_ids))
                if not np.isnan(pool.objectives[i, j])]
        assert [(t["fidelity"]) for t in trials] == [f for f, _ in rows]
        weights = np.array([[t["mixture"][d] for d in pool.domains] for t in trials])
        np.testing.assert_allclose(weights, pool.weights[[i for _, i in rows]], rtol=0, atol=1e-15)
        np.testing.assert_array_equal([t["objective"] for t in trials],
                                      [pool.objectives[i, [f.name for f in pool.fidelities].index(f)] for f, i in rows])

        api.start(study["id"])
        recommendation = api.recommendation(study["id"])
        study = api.get_study(study["id"])
    assert study["trial_counts"]["completed"] == 1024
    expected = _expected_recommendation(study, trials)
    assert recommendation["based_on_trials"] == expected.based_on_trials == 1024
    got = np.array([recommendation["mixture"][d] for d in pool.domains])
    np.testing.assert_allclose(got, expected.weights, rtol=0, atol=1e-12)
    assert recommendation["predicted"] == pytest.approx(expected.predicted, abs=1e-12)
    assert recommendation["meta"]["calibration"]["runs"] == 256  # the 60m runs calibrate the prediction
    # and the fit is a real one: the regression ranks the held-out runs (RegMix paper: ~0.99 on 1m)
    assert recommendation["meta"]["spearman"] > 0.9
