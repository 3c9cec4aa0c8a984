"""The proxy model is a Llama: same logits as ``transformers.LlamaForCausalLM``, exact parameter
counts, a fused head with the autograd gradient, and stacked members equal to single models."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from proxy_models import PRESETS, LlamaProxy, get_preset, preset_table


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_logits_match_hugging_face_llama():
    torch.manual_seed(0)
    preset = PRESETS["llama-tiny"]
    hf = LlamaForCausalLM(preset.hf_config(300)).eval()
    ours = LlamaProxy(preset, 300, n_models=2)
    ours.load_hf_member(hf, member=1)
    tokens = torch.randint(0, 300, (2, 3, 40))
    with torch.no_grad():
        expected = hf(tokens[1]).logits
        got = ours(tokens)[1]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        back = ours.to_hf(member=1).eval()
        torch.testing.assert_close(back(tokens[1]).logits, expected, atol=1e-6, rtol=1e-6)
        # the loss path agrees with a plain cross-entropy over the HF logits
        losses = ours(tokens[:, :, :-1], tokens[:, :, 1:], reduction="none")[1]
        ref = torch.nn.functional.cross_entropy(hf(tokens[1, :, :-1]).logits.transpose(1, 2), tokens[1, :, 1:],
                                                reduction="none")
        torch.testing.assert_close(losses, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_are_exact(name):
    preset = get_preset(name)
    with torch.device("meta"):
        model = LlamaProxy(preset, 8192)
        hf = LlamaForCausalLM(preset.hf_config(8192))
    hf_non_embedding = sum(p.numel() for n, p in hf.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    assert hf_non_embedding == preset.params_non_embedding
    assert sum(p.numel() for p in hf.parameters()) == preset.params_total(8192)  # tied head counted once
    assert sum(p.numel() for n, p in model.named_parameters() if n != "embed") == preset.params_non_embedding
    row = {r["name"]: r for r in preset_table()}[name]
    assert row["params_non_embedding"] == preset.params_non_embedding


def test_preset_sizes_are_as_named():
    sizes = {name: PRESETS[name].params_non_embedding for name in PRESETS}
    for name, target in (("llama-1m", 1e6), ("llama-5m", 5e6), ("llama-20m", 20e6), ("llama-60m", 60e6),
                         ("llama-150m", 150e6)):
        assert 0.9 * target <= sizes[name] <= 1.1 * target, (name, sizes[name])
    with pytest.raises(ValueError, match="unknown preset 'llama-7b'"):
        get_preset("llama-7b")


def test_fused_head_gradient_equals_autograd():
    torch.manual_seed(1)
    model = LlamaProxy(PRESETS["llama-tiny"], 500, n_models=3, seeds=[4, 5, 6])
    tokens = torch.randint(0, 500, (3, 4, 33))
    weights = torch.tensor([1.0, 2.0, 0.5])

    def grads(fused: bool):
        model.fused_head = fused
        model.zero_grad()
        losses = model(tokens[..., :-1], tokens[..., 1:])
        (losses * weights).sum().backward()
        return losses.detach(), [p.grad.clone() for p in model.parameters()]

    fused_loss, fused_grads = grads(True)
    plain_loss, plain_grads = grads(False)
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_stacked_member_equals_single_model():
    preset = PRESETS["llama-tiny"]
    stacked = LlamaProxy(preset, 200, n_models=3, seeds=[10, 11, 12])
    single = LlamaProxy(preset, 200, n_models=1, seeds=[11])
    tokens = torch.randint(0, 200, (1, 2, 24))
    with torch.no_grad():
        torch.testing.assert_close(stacked(tokens.expand(3, -1, -1))[1], single(tokens)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="seeds"):
        LlamaProxy(preset, 200, n_models=2, seeds=[1])


def test_real_rope_form_equals_complex_form():
    model = LlamaProxy(PRESETS["llama-tiny"], 300)
    tokens = torch.randint(0, 300, (1, 2, 50))
    with torch.no_grad():
        complex_logits = model(tokens)
        model.complex_rope = False
        torch.testing.assert_close(model(tokens), complex_logits, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_forward_and_backward():
    model = LlamaProxy(PRESETS["llama-tiny"], 300, n_models=2)
    tokens = torch.randint(0, 300, (2, 2, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(tokens[..., :-1], tokens[..., 1:])
    losses.sum().backward()
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
