"""Attacks with values that break studies, the database or workers: each is a 422 naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from service.schemas._trainer import WORKER_OWNED, TrainerParams
from tests.helpers import study_body


def _fidelity(**f) -> dict:
    return study_body(fidelities=[{"name": "big", "target": True, **f}])


def _field(r) -> str:
    assert r.status_code == 422, r.text
    return r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("fidelity, field", [
    ({"model": "llama-1m", "params": {"batch_size": 10**8}}, "fidelities.0.params.batch_size"),
    ({"model": "llama-1m", "params": {"vocab_size": 10**9}}, "fidelities.0.params.vocab_size"),
    ({"model": "llama-1m", "params": {"tokenizer": "/etc"}}, "fidelities.0.params.tokenizer"),
    ({"params": {"tokenizer": "../../secrets"}}, "fidelities.0.params.tokenizer"),
    ({"model": "llama-1m", "params": {"lr": "$(touch /tmp/x)"}}, "fidelities.0.params.lr"),
    ({"model": "llama-1m", "params": {"lr": "0.001"}}, "fidelities.0.params.lr"),
    ({"model": "llama-1m", "params": {"batch_size": True}}, "fidelities.0.params.batch_size"),
    ({"model": "llama-1m", "params": {"no_such_setting": 1}}, "fidelities.0.params.no_such_setting"),
    ({"model": "llama-1m", "params": {"schedule": "x; rm -rf /"}}, "fidelities.0.params.schedule"),
    ({"model": "llama-1m", "params": {"device": "cuda:0"}}, "fidelities.0.params.device"),
    ({"model": "x; touch /tmp/pwned"}, "fidelities.0.model"),
    ({"model": "$(id)"}, "fidelities.0.model"),
    ({"model": "my-megatron-7b", "params": {"flags": {"nested": "$(id)"}}}, "fidelities.0.params.flags"),
    ({"model": "my-megatron-7b", "params": {"note": "a\x00b"}}, "fidelities.0.params"),
    ({"model": "my-megatron-7b", "params": {"note": "x" * 1001}}, "fidelities.0.params.note"),
    ({"model": "my-megatron-7b", "params": {"batch_size": 10**8}}, "fidelities.0.params.batch_size"),
])
def test_fidelity_model_and_params_are_validated_at_creation(client, fidelity, field):
    """The attack: a write token creates a study whose fidelity asks every worker for a 10^8 batch,
    a tokenizer path of its choosing, or a shell payload; the server refuses it, naming the field."""
    msg = _field(client.post("/api/v1/studies", json=_fidelity(**fidelity)))
    assert msg.startswith(field), msg


def test_valid_trainer_params_and_free_command_params_pass(client):
    ok = [{"model": "llama-1m", "params": {"batch_size": 4, "seq_len": 64, "lr": 1e-3, "schedule": "wsd",
                                          "compile": False, "steps": 10}},
          {"model": "my-megatron-7b", "params": {"micro_batch": 4, "recipe": "cosine lr=3e-4", "fp8": True,
                                                "note": None}}]
    for f in ok:
        assert client.post("/api/v1/studies", json=_fidelity(**f)).status_code == 201


def test_trainer_schema_covers_the_trainer_settings():
    """The server's schema and the trainer's config may not drift apart."""
    from proxy_models import TrainConfig

    trainer = {f.name for f in dataclasses.fields(TrainConfig)}
    study = set(TrainerParams.model_fields) - {"steps"}
    assert study | set(WORKER_OWNED) | {"model", "tokens"} == trainer
