"""``mixopt export``: a study's recommended mixture in the formats that training stacks read.

Formats:

- ``json`` / ``yaml``: the mixture with its provenance (study, objective, prediction, how many
  trials it rests on), for configs and records.
- ``megatron``: Megatron-LM's weighted ``--data-path`` list ``w1 prefix1 w2 prefix2 ...``; each
  domain's data prefix comes from ``--prefix-template`` (``{domain}`` is replaced) and/or a JSON
  ``--prefix-map``. Domains with weight 0 (after rounding) are left out: Megatron would build an
  empty dataset for them. The printed weights sum to exactly 1.
- ``hf``: JSON ``{"domains": [...], "probabilities": [...]}`` in the study's domain order, for
  ``datasets.interleave_datasets(datasets, probabilities=probabilities)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from ._remote import connect, fail, token_option, url_option

DEFAULT_PREFIX_TEMPLATE = "{domain}_text_document"
"""Megatron's ``tools/preprocess_data.py`` writes ``<output-prefix>_text_document.{bin,idx}``."""


class ExportFormat(str, Enum):
    json = "json"
    yaml = "yaml"
    megatron = "megatron"
    hf = "hf"


def rounded_weights(weights: Sequence[float], digits: int) -> list[Decimal]:
    """``k`` weights rounded to ``digits`` decimals that sum to exactly 1 (in decimal): the
    rounding residual goes to the largest weight.

    Raises:
        ValueError: when the weights are negative or sum to 0.
    """
    weights = [float(w) for w in weights]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    total = sum(weights)
    quantum = Decimal(1).scaleb(-digits)
    out = [Decimal(float(w) / total).quantize(quantum, rounding=ROUND_HALF_EVEN) for w in weights]
    largest = max(range(len(out)), key=lambda i: out[i])
    out[largest] += Decimal(1) - sum(out)
    return out


def data_prefixes(domains: Sequence[str], template: str | None, mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Each domain's Megatron data prefix: its entry in ``mapping``, else ``template`` with
    ``{domain}`` replaced. With a mapping and no template, every domain must be mapped.

    Raises:
        ValueError: naming the domains that have no prefix, or a template without ``{domain}``.
    """
    mapping = dict(mapping or {})
    if template is not None and "{domain}" not in template:
        raise ValueError(f"--prefix-template must contain {{domain}}, got {template!r}")
    if template is None and not mapping:
        template = DEFAULT_PREFIX_TEMPLATE
    missing = [d for d in domains if d not in mapping and template is None]
    if missing:
        raise ValueError(f"--prefix-map has no prefix for domain(s) {missing} (or add --prefix-template)")
    prefixes = {d: mapping[d] if d in mapping else template.replace("{domain}", d) for d in domains}
    blank = [d for d, p in prefixes.items() if not p.strip() or any(c.isspace() for c in p)]
    if blank:
        raise ValueError(f"data prefix of domain(s) {blank} is empty or contains whitespace: Megatron splits on spaces")
    return prefixes


def megatron_data_path(mixture: Mapping[str, float], domains: Sequence[str], prefixes: Mapping[str, str],
                       digits: int = 8) -> str:
    """Megatron-LM's ``--data-path`` value ``w1 prefix1 w2 prefix2 ...`` in ``domains`` order,
    without the domains whose rounded weight is 0."""
    weights = rounded_weights([float(mixture.get(d, 0.0)) for d in domains], digits)
    return " ".join(f"{w.normalize():f} {prefixes[d]}" for d, w in zip(domains, weights) if w != 0)


def hf_probabilities(mixture: Mapping[str, float], domains: Sequence[str]) -> list[float]:
    """``interleave_datasets`` probabilities: the weights in ``domains`` order, renormalised in
    float64 (zeros kept, so that position ``i`` is always domain ``i``)."""
    weights = [max(float(mixture.get(d, 0.0)), 0.0) for d in domains]
    total = sum(weights)
    if total <= 0:
        raise ValueError("the mixture's weights sum to 0")
    return [w / total for w in weights]


def mixture_document(study: Mapping[str, Any], recommendation: Mapping[str, Any]) -> dict[str, Any]:
    """The ``json``/``yaml`` export: the mixture in the study's domain order, with provenance."""
    domains = [d["name"] for d in study["domains"]]
    target = next((f["name"] for f in study["fidelities"] if f.get("target")), None)
    return {
        "mixture": {d: float(recommendation["mixture"].get(d, 0.0)) for d in domains},
        "predicted": recommendation.get("predicted"),
        "uncertainty": recommendation.get("uncertainty"),
        "based_on_trials": recommendation.get("based_on_trials"),
        "final": recommendation.get("final", False),
        "computed_at": recommendation.get("created_at"),
        "study": {
            "id": study["id"],
            "name": study["name"],
            "state": study["state"],
            "strategy": study["strategy"]["name"],
            "objective": study["objective"],
            "target_fidelity": target,
        },
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mixopt_version": _version(),
    }


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixopt")
    except PackageNotFoundError:
        return None


def render(fmt: ExportFormat, study: Mapping[str, Any], recommendation: Mapping[str, Any], *,
           prefix_template: str | None = None, prefix_map: Mapping[str, str] | None = None, digits: int = 8) -> str:
    """The export of ``recommendation`` (of ``study``, both as the API returns them) as text."""
    domains = [d["name"] for d in study["domains"]]
    mixture = recommendation["mixture"]
    if fmt is ExportFormat.megatron:
        used = [d for d in domains if mixture.get(d, 0.0) > 0]
        return megatron_data_path(mixture, domains, data_prefixes(used, prefix_template, prefix_map), digits) + "\n"
    if fmt is ExportFormat.hf:
        doc = {"domains": domains, "probabilities": hf_probabilities(mixture, domains),
               "study": {"id": study["id"], "name": study["name"]}}
        return json.dumps(doc, indent=2) + "\n"
    doc = mixture_document(study, recommendation)
    if fmt is ExportFormat.yaml:
        import yaml

        return yaml.safe_dump(doc, sort_keys=False)
    return json.dumps(doc, indent=2) + "\n"


def export(
    study: int = typer.Argument(..., help="the study's id"),
    fmt: ExportFormat = typer.Option(ExportFormat.json, "--format", "-f", help="json, yaml, megatron or hf"),
    output: Path = typer.Option(None, "--output", "-o", help="write here instead of stdout"),
    prefix_template: str = typer.Option(
        None, help=f"megatron: data prefix per domain, '{{domain}}' replaced (default {DEFAULT_PREFIX_TEMPLATE})"),
    prefix_map: Path = typer.Option(None, help="megatron: JSON file {domain: data prefix} (wins over the template)"),
    digits: int = typer.Option(8, min=1, max=17, help="megatron: decimals of the printed weights"),
    url: str = url_option(),
    token: str = token_option("read"),
) -> None:
    """Export a study's recommended mixture as a training config.

    The current recommendation (the final one once the study completed), as Megatron-LM
    --data-path, Hugging Face interleave_datasets probabilities, JSON or YAML."""
    mapping = None
    if prefix_map is not None:
        try:
            mapping = json.loads(prefix_map.read_text())
        except (OSError, ValueError) as e:
            fail(f"cannot read {prefix_map}: {e}", "--prefix-map")
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            fail(f"{prefix_map} must hold a JSON object {{domain: prefix}}", "--prefix-map")
    with connect(url, token) as api:
        study_doc = api.get_study(study)
        recommendation = api.recommendation(study)
    unknown = sorted(set(mapping or {}) - {d["name"] for d in study_doc["domains"]})
    if unknown:
        fail(f"domain(s) {unknown} are not in study {study}", "--prefix-map")
    try:
        text = render(fmt, study_doc, recommendation, prefix_template=prefix_template, prefix_map=mapping,
                      digits=digits)
    except ValueError as e:
        fail(str(e))
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        typer.echo(f"wrote {fmt.value} export of study {study} to {output}", err=True)
