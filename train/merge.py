"""Merge a LoRA adapter into its base model, verify the merge, and save a plain checkpoint.

    python -m train.merge --adapter runs/ul2/adapter --output runs/ul2/merged
    python -m train.merge --adapter runs/demo/train/adapter --output runs/demo/merged \\
        --dtype float32
    python -m train.merge --adapter runs/ul2/adapter --output runs/ul2/merged \\
        --push_to_hub YOUR_NAME/conala-ul2-rewrite     # after `hf auth login`
    make merge ADAPTER=runs/ul2/adapter OUT=runs/ul2/merged

The base is the one recorded in the adapter's `adapter_config.json` unless `--base`
names another; a base whose architecture or layer shapes don't fit the adapter is
refused before any weights load. Merging runs on CPU, outside DeepSpeed, in bf16 by
default (never fp16: T5/UL2 activations overflow its range). Before the merged model
is written, its logits on a few fixed sources are compared with the adapter model's
(base + LoRA, same dtype); a difference above tolerance fails the merge.

The output holds sharded safetensors, the tokenizer, the generation config,
`source_template.json` (translate-mined formats sources with it by default), a model
card `README.md` and `merge_report.json`. It is written to a hidden temp dir beside
`--output` and renamed into place at the end, so an interrupted merge never leaves a
directory that looks complete.

Memory: one model copy in the merge dtype plus the shard being written. For UL2 (20B)
that is ~40 GB of RAM in bf16 (+ up to `--max_shard_size`, 5 GB by default), ~80 GB
in float32. The LoRA weights and the verification logits are negligible next to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import HfApi, get_token
from peft import PeftModel
from peft.tuners.tuners_utils import _get_in_out_features
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    HfArgumentParser,
)
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from transformers.utils.hub import convert_file_size_to_int

from data.prompts import SourceTemplate
from serve.engines.hf import DTYPES
from train.adapter import ADAPTER_WEIGHTS, EmptyAdapterError, check_adapter

logger = logging.getLogger("train.merge")

# Max |merged logits - adapter logits| allowed, as a fraction of the largest adapter
# logit (at least 1). Measured fractions, on 6 verification inputs:
# - float32 is exact up to summation order: <= 2e-6 for the trained tiny T5 and Llama.
# - bfloat16: the merged weight W + BA is rounded to 8 mantissa bits while the adapter
#   model adds an fp32 LoRA path to the bf16 output, so the two differ by rounding
#   noise that grows with depth: 8e-3 (tiny T5) and 1.6e-2 (tiny Llama) trained; with
#   random weights (width 256, LoRA r=16 on all linears) 1.6e-2 / 2.0e-2 / 3.2e-2 for
#   T5 with 2 / 8 / 24 layers per stack and 0.8e-2 / 1.5e-2 / 2.0e-2 for Llama.
# UL2 (32 + 32 layers) could not be measured here; 1e-1 leaves ~3x over the deepest
# measurement. A missing or wrong merge moves the logits by about the adapter's own
# effect (adapter_effect_max_abs in the report; 0.2-1 of the largest logit in those
# runs), so it still fails, and a warning says when the effect is too small to tell.
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1}
VERIFY_HINT = {
    "bfloat16": "Retry with --dtype float32 to tell bf16 rounding from a broken merge.",
    "float32": "In float32 that is not rounding: the merge is wrong (PEFT version, layer type?).",
}

# Fixed (intent, snippet, target) rows: sources are built with the adapter's template,
# targets feed the decoder (or follow the prompt for causal LMs). One has no intent.
VERIFY_ROWS = [
    ("sort list `x` in descending order", "sorted(x, reverse=True)", "sort list `x` descending"),
    ("How to join a list of strings?", "', '.join(words)", "join strings in `words` with ', '"),
    (None, "json.loads(text)", "parse the JSON string `text`"),
    ("read a whole file", "open('data.txt').read()", "read the contents of file 'data.txt'"),
    ("count occurrences", "items.count(7)", "count the occurrences of 7 in list `items`"),
    ("convert string to int", "int(s)", "convert string `s` to an integer"),
]

LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?:embedding_)?(?P<side>[AB])")
TASK_TYPE = {True: "SEQ_2_SEQ_LM", False: "CAUSAL_LM"}


class MergeError(RuntimeError):
    """A merge that ran but must not be trusted or published (verification, push)."""


@dataclass
class MergeArguments:
    adapter: str = field(
        metadata={
            "help": "Directory of the trained LoRA adapter (train.finetune's OUTPUT/adapter)."
        }
    )
    output: str = field(
        metadata={"help": "Directory for the merged model; must be new or empty (see --overwrite)."}
    )
    base: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local directory of the base model. Default: the "
            "base_model_name_or_path recorded in the adapter's adapter_config.json."
        },
    )
    dtype: str = field(
        default="bfloat16",
        metadata={"help": "Precision of the merge and of the saved weights: bfloat16 or float32."},
    )
    max_shard_size: str = field(
        default="5GB",
        metadata={"help": "Largest safetensors shard, e.g. 5GB or 200MB."},
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "After saving locally, upload to this Hub repo (NAMESPACE/NAME, a namespace "
            "you can write to; created private if missing). Needs `hf auth login` or HF_TOKEN."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace a non-empty --output (only once the new merge is complete)."},
    )
    no_verify: bool = field(
        default=False,
        metadata={"help": "Skip the logit comparison of the merged model against the adapter."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modeling code from the hub. Off unless you trust it."},
    )

    def __post_init__(self):
        if self.dtype in ("float16", "fp16", "half"):
            raise ValueError(
                f"--dtype {self.dtype} is refused: T5/UL2 activations overflow fp16 (max "
                "65504), so an fp16 merge produces inf/NaN outputs. Use --dtype bfloat16 "
                "(the default, same size) or --dtype float32."
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype}: choose bfloat16 or float32")
        try:
            convert_file_size_to_int(self.max_shard_size)
        except ValueError as err:
            raise ValueError(
                f"--max_shard_size {self.max_shard_size}: not a size; write e.g. 5GB or 200MB"
            ) from err
        if self.push_to_hub is not None and self.push_to_hub.count("/") != 1:
            raise ValueError(
                f"--push_to_hub {self.push_to_hub}: give the full repo id NAMESPACE/NAME, "
                "where NAMESPACE is your user name or an organisation you can write to"
            )


@dataclass
class Adapter:
    path: Path
    config: dict
    template: SourceTemplate
    template_recorded: bool
    stats: dict


def main(argv: list[str] | None = None) -> dict:
    """Merge, verify and save; return the merge report. Raises on any refusal."""
    start = time.perf_counter()
    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(args=argv)
    check_output(args)
    adapter = inspect_adapter(args.adapter)
    base = args.base or adapter.config["base_model_name_or_path"]
    config = check_compatibility(base, adapter, args.trust_remote_code)
    warn_if_push_will_fail(args.push_to_hub)
    model, tokenizer = load_adapter_model(base, adapter, config, args)
    model, verification = merge_and_verify(model, tokenizer, adapter.template, args)
    report = {
        "base": base,
        "adapter": str(adapter.path.resolve()),
        "dtype": args.dtype,
        "adapter_stats": adapter.stats,
        "verification": verification,
    }
    save_atomically(model, tokenizer, adapter, report, args, start)
    print_summary(report, args.output)
    if args.push_to_hub:
        push(Path(args.output), args.push_to_hub)
    return report


def check_output(args: MergeArguments) -> None:
    """Refuse an output that would clobber work: non-empty, a file, or holding the inputs."""
    output = Path(args.output).resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {args.output} is a file; choose a directory path")
    inputs = [Path(args.adapter).resolve()]
    if args.base and Path(args.base).exists():
        inputs.append(Path(args.base).resolve())
    for path in inputs:
        if path == output or output in path.parents:
            raise ValueError(
                f"--output {args.output} holds the input {path}; replacing it would delete "
                "the input. Choose another --output"
            )
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise ValueError(
            f"--output {args.output} exists and is not empty; pass --overwrite to replace it "
            "or choose another --output"
        )


def inspect_adapter(directory: str) -> Adapter:
    """Refuse empty/corrupt adapters (check_adapter) and read their config and template."""
    path = Path(directory)
    stats = check_adapter(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"--adapter {directory}: no adapter_config.json; is this a PEFT adapter?")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"--adapter {directory}: peft_type {config.get('peft_type')}, not LORA")
    template = SourceTemplate.load(path)
    if template is None:
        logger.warning("%s has no source_template.json; recording the default template", path)
    return Adapter(path, config, template or SourceTemplate(), template is not None, stats)


def check_compatibility(base: str, adapter: Adapter, trust_remote_code: bool):
    """Return the base config; refuse a base the adapter was not trained on.

    Compares the task type, then every LoRA tensor's shape in the adapter file
    (A is [r, in_features], B is [out_features, r]) with the base's module of that
    name, built on the meta device: no weights are read, so a wrong base fails in
    seconds rather than after loading 40 GB.
    """
    recorded = adapter.config.get("base_model_name_or_path")
    fix = f"Pass the base the adapter was trained on (adapter_config.json records {recorded})."
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    except OSError as err:  # a missing local path, or a hub id while offline
        raise ValueError(f"--base {base}: cannot load its config ({err}). {fix}") from err
    task = adapter.config.get("task_type")
    if task and task != TASK_TYPE[config.is_encoder_decoder]:
        kind = "an encoder-decoder" if config.is_encoder_decoder else "a decoder-only model"
        raise ValueError(
            f"--base {base} is {kind} ({config.model_type}) but the adapter was trained "
            f"for {task}. {fix}"
        )
    with torch.device("meta"):
        skeleton = model_class(config).from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(skeleton.named_modules())
    # Other entries (modules_to_save, DoRA magnitudes) are left to PEFT's own load checks.
    lora = {
        key: shape for key, shape in adapter_shapes(adapter.path).items() if LORA_KEY.match(key)
    }
    problems = []
    for key, shape in lora.items():
        name, side = LORA_KEY.match(key).group("module", "side")
        if name not in modules:
            problems.append(f"{name} does not exist in the base")
            continue
        in_features, out_features = _get_in_out_features(modules[name])
        expected = in_features if side == "A" else out_features
        actual = shape[1] if side == "A" else shape[0]
        if expected is not None and actual != expected:
            feature = "in_features" if side == "A" else "out_features"
            problems.append(f"{name}: lora_{side} fits {feature}={actual}, base has {expected}")
    if problems:
        raise ValueError(
            f"--base {base} ({config.model_type}) does not match the adapter: "
            f"{len(problems)} of {len(lora)} LoRA tensors conflict, e.g. "
            f"{'; '.join(problems[:3])}. {fix}"
        )
    return config


def adapter_shapes(directory: Path) -> dict[str, list[int]]:
    with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as handle:
        return {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118


def model_class(config):
    return AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM


def warn_if_push_will_fail(repo_id: str | None) -> None:
    # Said up front because a UL2 merge takes a long while before the push is reached.
    if repo_id and get_token() is None:
        logger.warning(
            "--push_to_hub %s: not logged in to the Hub; the merge will be saved locally "
            "and the push will then fail. Run `hf auth login` or set HF_TOKEN first.",
            repo_id,
        )


def load_adapter_model(base: str, adapter: Adapter, config, args: MergeArguments):
    """Base on CPU in the merge dtype, wrapped with the adapter; plus the tokenizer."""
    # An HfDeepSpeedConfig left alive in this process (e.g. by training code) would make
    # from_pretrained partition the weights under zero.Init; merging needs them whole.
    unset_hf_deepspeed_config()
    # transformers 5 loads lazily (meta device, then tensor by tensor from the shards),
    # which is the old low_cpu_mem_usage path: peak RAM is about one model copy.
    model = model_class(config).from_pretrained(
        base,
        config=config,
        dtype=DTYPES[args.dtype],
        use_safetensors=True,
        trust_remote_code=args.trust_remote_code,
    )
    model = PeftModel.from_pretrained(model, str(adapter.path), low_cpu_mem_usage=True).eval()
    has_tokenizer = (adapter.path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(
        str(adapter.path) if has_tokenizer else base, trust_remote_code=args.trust_remote_code
    )
    return model, tokenizer


def merge_and_verify(model, tokenizer, template: SourceTemplate, args: MergeArguments):
    """Merge in place; unless --no_verify, fail if the merged logits left the adapter's.

    The adapter (and base) logits are taken before merge_and_unload, which rewrites
    the same weights, so only one model copy is ever in memory.
    """
    if args.no_verify:
        return model.merge_and_unload(), {"skipped": True}
    inputs, mask = verification_batch(tokenizer, template, model.config)
    adapter_logits = valid_logits(model, inputs, mask)
    with model.disable_adapter():
        base_logits = valid_logits(model, inputs, mask)
    model = model.merge_and_unload()
    merged_logits = valid_logits(model, inputs, mask)
    scale = max(1.0, float(adapter_logits.abs().max()))
    verification = {
        "max_abs_diff": float((merged_logits - adapter_logits).abs().max()),
        "tolerance": TOLERANCE[args.dtype] * scale,
        "max_abs_logit": scale,
        "adapter_effect_max_abs": float((adapter_logits - base_logits).abs().max()),
        "n_inputs": len(VERIFY_ROWS),
        "n_positions": int(mask.sum()),
    }
    verification["passed"] = verification["max_abs_diff"] <= verification["tolerance"]
    if not verification["passed"]:
        raise MergeError(
            f"verification failed: merged logits differ from the adapter model's by "
            f"{verification['max_abs_diff']:.3g} (tolerance {verification['tolerance']:.3g}, "
            f"dtype {args.dtype}); nothing was written. {VERIFY_HINT[args.dtype]}"
        )
    if verification["adapter_effect_max_abs"] <= verification["tolerance"]:
        logger.warning(
            "the adapter changes the logits by at most %.3g, within the tolerance: the "
            "verification cannot tell a merged model from the base here",
            verification["adapter_effect_max_abs"],
        )
    return model, verification


def verification_batch(tokenizer, template: SourceTemplate, config):
    """Model inputs for VERIFY_ROWS and the mask of the positions whose logits count.

    Encoder-decoders get the source on the encoder and decoder_start + target on the
    decoder; causal LMs get source + target as one sequence. Sequences are right-padded
    by hand (any pad id works: padded positions are masked out and, with right padding,
    never influence a real position), so a tokenizer without a pad token is fine.
    """
    sources = [template.format(intent, snippet) for intent, snippet, _ in VERIFY_ROWS]
    targets = [target for _, _, target in VERIFY_ROWS]
    if not config.is_encoder_decoder:
        ids, mask = pad([tokenizer(s + t)["input_ids"] for s, t in zip(sources, targets)])
        return {"input_ids": ids, "attention_mask": mask}, mask
    start = config.decoder_start_token_id
    if start is None:
        raise ValueError("the base config has no decoder_start_token_id; cannot verify")
    source_ids, source_mask = pad([tokenizer(s)["input_ids"] for s in sources])
    target_ids = [[start, *tokenizer(text_target=t)["input_ids"][:-1]] for t in targets]
    decoder_ids, decoder_mask = pad(target_ids)
    inputs = {
        "input_ids": source_ids,
        "attention_mask": source_mask,
        "decoder_input_ids": decoder_ids,
        "decoder_attention_mask": decoder_mask,
    }
    return inputs, decoder_mask


def pad(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, sequences))
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return ids, mask


@torch.inference_mode()
def valid_logits(model, inputs: dict, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the unpadded positions, as float32 [positions, vocab]."""
    return model(**inputs).logits[mask.bool()].float()


def save_atomically(model, tokenizer, adapter: Adapter, report: dict, args, start: float):
    """Write everything into a temp dir beside --output, then rename it into place."""
    output = Path(args.output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and named .partial: a crash leaves it behind, but never looking like a model.
    staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
    staging.mkdir()
    try:
        model.save_pretrained(staging, max_shard_size=args.max_shard_size)  # + generation config
        tokenizer.save_pretrained(staging)
        adapter.template.save(staging)
        report["template_recorded_by_adapter"] = adapter.template_recorded
        report["shards"] = sorted(p.name for p in staging.glob("*.safetensors"))
        report["wall_seconds"] = time.perf_counter() - start
        report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (staging / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(report, adapter))
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_dir(new: Path, output: Path) -> None:
    """Rename `new` to `output`; an existing output is moved aside first, then deleted."""
    if not output.exists():
        new.rename(output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    output.rename(old)
    new.rename(output)
    shutil.rmtree(old)


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


def print_summary(report: dict, output: str) -> None:
    verification = report["verification"]
    check = (
        "skipped"
        if verification.get("skipped")
        else f"max abs logit diff {verification['max_abs_diff']:.3g} "
        f"<= {verification['tolerance']:.3g}"
    )
    print(
        f"merged {report['adapter']} into {report['base']} ({report['dtype']}) -> {output}\n"
        f"  verification: {check}\n"
        f"  {len(report['shards'])} shard(s), {report['wall_seconds']:.1f} s, "
        f"peak RSS {report['peak_rss_mb']:.0f} MB"
    )


def push(output: Path, repo_id: str) -> None:
    """Upload the saved merge; every failure says how to fix it and how to retry by hand."""
    retry = f"The merged model is saved in {output}; upload it with `hf upload {repo_id} {output}`."
    if get_token() is None:
        raise MergeError(
            f"--push_to_hub {repo_id}: not logged in to the Hugging Face Hub. Run "
            f"`hf auth login` (or set HF_TOKEN to a token with write access). {retry}"
        )
    api = HfApi()
    try:
        user = api.whoami()
    except Exception as err:  # offline, expired token, ...: the hub client raises many types
        raise MergeError(f"--push_to_hub: cannot check the Hub login ({err}). {retry}") from err
    writable = {user["name"], *(org["name"] for org in user.get("orgs", []))}
    namespace = repo_id.split("/")[0]
    if namespace not in writable:
        raise MergeError(
            f"--push_to_hub {repo_id}: logged in as {user['name']}, who can write to "
            f"{sorted(writable)}, not {namespace}. Use one of those namespaces. {retry}"
        )
    try:
        api.create_repo(repo_id, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(output))
    except Exception as err:
        raise MergeError(f"--push_to_hub {repo_id}: upload failed ({err}). {retry}") from err
    print(f"  pushed to https://huggingface.co/{repo_id}")


def cli(argv: list[str] | None = None) -> int:
    """Exit status for the shell: refusals print one `merge: error:` line, not a traceback."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level="INFO")
    try:
        main(argv)
    except (ValueError, EmptyAdapterError, MergeError) as err:
        print(f"merge: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
