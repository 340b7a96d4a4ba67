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

# Before the slow imports: it makes a Ctrl-C during them one line.
from common.cli import (  # isort: skip
    UserError,
    arg,
    parse_with_config,
    read_json,
    real_path,
    refuse_overlap,
    remove_dead_leftovers,
    run,
    staging_dir,
)
import json
import logging
import os
import re
import resource
import shutil
import time
from dataclasses import MISSING, dataclass
from pathlib import Path

import torch
from huggingface_hub import get_token
from peft import PeftModel
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from transformers.utils.hub import convert_file_size_to_int

from common.hub import check_repo_id, push_folder
from common.model_files import check_model_files
from data.prompts import SourceTemplate
from serve.engines.hf import DTYPES
from train.adapter import ADAPTER_WEIGHTS, check_adapter
from train.model_card import Adapter, model_card
from train.verify_merge import merge_and_verify

logger = logging.getLogger("train.merge")

LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?:embedding_)?(?P<side>[AB])")
TASK_TYPE = {True: "SEQ_2_SEQ_LM", False: "CAUSAL_LM"}


@dataclass
class MergeArguments:
    adapter: str = arg(
        MISSING, "Directory of the trained LoRA adapter (train.finetune's OUTPUT/adapter)."
    )
    output: str = arg(
        MISSING, "Directory for the merged model; must be new or empty (see --overwrite)."
    )
    base: str | None = arg(
        None,
        "Hub id or local directory of the base model. Default: the "
        "base_model_name_or_path recorded in the adapter's adapter_config.json.",
    )
    dtype: str = arg(
        "bfloat16", "Precision of the merge and of the saved weights: bfloat16 or float32."
    )
    max_shard_size: str = arg("5GB", "Largest safetensors shard, e.g. 5GB or 200MB.")
    push_to_hub: str | None = arg(
        None,
        "After saving locally, upload to this Hub repo (NAMESPACE/NAME, a namespace "
        "you can write to; created private if missing). Needs `hf auth login` or HF_TOKEN.",
    )
    config: str | None = arg(None, "YAML file of these flags; command-line flags override it.")
    overwrite: bool = arg(
        False, "Replace a non-empty --output (only once the new merge is complete)."
    )
    no_verify: bool = arg(
        False, "Skip the logit comparison of the merged model against the adapter."
    )
    trust_remote_code: bool = arg(
        False, "Allow custom modeling code from the hub. Off unless you trust it."
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
        if self.push_to_hub is not None:
            check_repo_id("--push_to_hub", self.push_to_hub)


def main(argv: list[str] | None = None) -> dict:
    """Merge, verify and save; return the merge report. Raises on any refusal."""
    start = time.perf_counter()
    (args,) = parse_with_config((MergeArguments,), argv)
    adapter = inspect_adapter(args.adapter)
    base = args.base or adapter.config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UserError(
            f"--adapter {args.adapter}: adapter_config.json records no base model "
            "(base_model_name_or_path); pass --base"
        )
    check_output(args, base)
    check_model_files(base, "--base", tokenizer=not adapter_tokenizer(adapter))
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
        print(f"  pushed to {push_folder(args.output, args.push_to_hub)}")
    return report


def check_output(args: MergeArguments, base: str) -> None:
    """Refuse an output that would clobber work: non-empty, a file, or holding the inputs
    (the base too when it comes from adapter_config.json)."""
    output = real_path(args.output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {args.output} is a file; choose a directory path")
    refuse_overlap("--output", args.output, {"--adapter": [args.adapter], "--base": [base]})
    remove_dead_leftovers(output, ("partial", "old"))
    try:  # found now, not after the merge: an output that cannot be written
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output {args.output}: cannot create it ({err.strerror})") from None
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"--output {args.output}: {output.parent} is not writable")
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
    config = read_json(config_file, "--adapter")
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
        in_features, out_features = layer_features(modules[name])
        expected = in_features if side == "A" else out_features
        actual = shape[1] if side == "A" else shape[0]
        if expected is not None and actual != expected:
            feature = "in_features" if side == "A" else "out_features"
            problems.append(f"{name}: lora_{side} fits {feature}={actual}, base has {expected}")
    check_rank(adapter, lora)
    if problems:
        raise ValueError(
            f"--base {base} ({config.model_type}) does not match the adapter: "
            f"{len(problems)} of {len(lora)} LoRA tensors conflict, e.g. "
            f"{'; '.join(problems[:3])}. {fix}"
        )
    return config


def check_rank(adapter: Adapter, lora: dict[str, list[int]]) -> None:
    """The rank adapter_config.json records must be the weights' rank (PEFT would fail
    with a size mismatch deep in loading); per-module rank patterns are left to PEFT."""
    rank = adapter.config.get("r")
    if adapter.config.get("rank_pattern") or not isinstance(rank, int):
        return
    for key, shape in lora.items():
        side = LORA_KEY.match(key).group("side")
        actual = shape[0] if side == "A" else shape[1]
        if actual != rank:
            raise UserError(
                f"--adapter {adapter.path}: adapter_config.json says r={rank} but {key} has "
                f"rank {actual}; the config does not belong to these weights"
            )


def layer_features(module) -> tuple[int | None, int | None]:
    """(in, out) features of a layer LoRA can adapt: Linear, GPT-2's Conv1D (weight stored
    transposed), Embedding; (None, None) for anything else (left to PEFT's checks)."""
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        rows, cols = module.weight.shape  # Conv1D: [in, out]
        return rows, cols
    return None, None


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


def adapter_tokenizer(adapter: Adapter) -> bool:
    """Training saves the tokenizer with the adapter; the merge then takes that one."""
    return (adapter.path / "tokenizer_config.json").is_file()


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
    tokenizer = AutoTokenizer.from_pretrained(
        str(adapter.path) if adapter_tokenizer(adapter) else base,
        trust_remote_code=args.trust_remote_code,
    )
    return model, tokenizer


def save_atomically(model, tokenizer, adapter: Adapter, report: dict, args, start: float):
    """Write everything into a temp dir beside --output, then rename it into place."""
    output = real_path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and named .partial: a kill -9 leaves it behind, never looking like a model,
    # and the next merge to this output removes it.
    staging = staging_dir(output, "partial")
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
    old = staging_dir(output, "old")
    output.rename(old)
    new.rename(output)
    shutil.rmtree(old)


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


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level="INFO")
    run(main, "train.merge")
