"""The merged model's card (README.md): base, adapter, training run, metrics, checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data.prompts import SourceTemplate


@dataclass
class Adapter:
    """A saved LoRA adapter as train.merge reads it: what the card describes. Defined here,
    not in train.merge, so that the card does not import the module that imports it."""

    path: Path
    config: dict
    template: SourceTemplate
    template_recorded: bool
    stats: dict


def model_card(report: dict, adapter: Adapter) -> str:
    """README.md: base, adapter, LoRA settings, training run, metrics, template, check."""
    base = report["base"]
    lora = adapter.config
    # A list of module names (Llama's all-linear lists every layer's full path: keep the
    # distinct leaf names) or one regex string.
    targets = lora.get("target_modules")
    if isinstance(targets, list):
        targets = sorted({name.rsplit(".", 1)[-1] for name in targets})
    run_dir = adapter.path.resolve().parent
    metrics = read_json(run_dir / "metrics.json")
    summary = read_json(run_dir / "train_summary.json")
    # Hub metadata must name a Hub model; a local base path is only stated in the text.
    front = f"base_model: {base}\n" if not Path(base).exists() else ""
    lines = [
        f"---\n{front}library_name: transformers\ntags:\n- lora\n- merged\n- conala\n---",
        "# CoNaLa intent rewriter (merged LoRA)",
        "",
        f"- Base model: `{base}`",
        f"- Adapter: `{report['adapter']}` (LoRA r={lora.get('r')}, "
        f"alpha={lora.get('lora_alpha')}, targets {targets})",
        f"- Merge dtype: {report['dtype']}",
        "",
        "## Source template (inference must format sources this way)",
        "",
        f"Prefix: `{json.dumps(adapter.template.prefix)}`; template: "
        f"`{json.dumps(adapter.template.template)}` (fields: intent, snippet; a missing "
        "intent is the empty string). Stored in `source_template.json`, which translate-mined "
        "reads by default."
        + ("" if adapter.template_recorded else " The adapter recorded none: this is the default."),
        "",
        "## Training run",
        "",
        training_section(summary, run_dir),
        "",
        "## Validation metrics (from the run's metrics.json)",
        "",
        metrics_section(metrics),
        "",
        "## Merge verification",
        "",
        verification_section(report["verification"]),
        "",
    ]
    return "\n".join(lines)


def training_section(summary: dict | None, run_dir: Path) -> str:
    if summary is None:
        return f"No train_summary.json in `{run_dir}`; training data and steps not recorded."
    data = {k: summary[k] for k in ("train_file", "validation_file") if k in summary}
    data_line = (
        ", ".join(f"{k}: `{v}`" for k, v in data.items())
        if data
        else "not recorded by the run (train.finetune's --train_file; CoNaLa curated by default)"
    )
    return (
        f"Data: {data_line}. Run dir `{run_dir}`: {summary.get('global_step')} steps on "
        f"{summary.get('world_size')} ranks, {summary.get('train_seconds', 0):.0f} s."
    )


def metrics_section(metrics: dict | None) -> str:
    if metrics is None:
        return "No metrics.json next to the adapter."
    lines = []
    if metrics.get("eval_loss"):
        last = metrics["eval_loss"][-1]
        lines.append(f"- eval loss {last['eval_loss']:.4f} at step {last['step']}")
    generation = metrics.get("generation")
    if generation:
        lines.append(
            f"- BLEU {generation['bleu']:.2f}, chrF {generation['chrf']:.2f}, exact match "
            f"{generation['exact_match']:.3f} on {generation['samples']} validation pairs"
        )
    return "\n".join(lines) or "metrics.json holds no eval loss or generation metrics."


def verification_section(verification: dict) -> str:
    if verification.get("skipped"):
        return "Skipped (--no_verify): the merged model was not compared with the adapter."
    return (
        f"Logits of the merged model vs base + adapter on {verification['n_inputs']} fixed "
        f"inputs: max abs diff {verification['max_abs_diff']:.3g}, tolerance "
        f"{verification['tolerance']:.3g}: {'passed' if verification['passed'] else 'FAILED'}."
    )


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
