"""translate-mined: stream CoNaLa mined rows through a batched engine into Parquet shards.

One process (engine chosen from the model's architecture):
    python -m serve.translate --model runs/ul2/merged --output_dir runs/ul2/mined
One process per GPU (each rank takes shards r, r+W, ...; results equal one process):
    torchrun --nproc_per_node 8 -m serve.translate --model ... --output_dir ...
Local files instead of the hub, a quick look at 1,000 rows:
    python -m serve.translate --model M --output_dir OUT --input conala-mined.jsonl --limit 1000

Rerunning the same command resumes: finished shards are skipped, and a run killed
at any point leaves every input id exactly once across the shards. Changed
parameters, or a changed model at the same path, are refused unless `--overwrite`
is given. A user mistake ends with one line on stderr and exit code 2 (`--debug`
shows the traceback); a bad row becomes that row's `error` and never stops a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from common.cli import arg, parse_with_config, run
from common.dist import rank_and_world, setup_logging
from data.loaders import HUB_DATASET
from serve import runner
from serve.engines import CHOICES
from serve.engines.base import PRECISIONS, GenerationOptions

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class TranslateArguments:
    model: str = arg(None, "Merged model directory (or hub id) to generate with.")
    output_dir: str = arg(None, "Directory for the Parquet shards.")
    input: list[str] | None = arg(
        None, "Mined files (.jsonl/.json/.parquet), read in order. Default: --dataset."
    )
    dataset: str = arg(HUB_DATASET, "Hub dataset whose mined split is read.")
    engine: str = arg(
        "auto",
        "auto: vLLM for decoder-only models, CTranslate2 for encoder-decoders, "
        "each when it can run on this device (see `make doctor`), else HF generate.",
        choices=list(CHOICES),
    )
    precision: str = arg(
        "auto",
        "auto (bfloat16 on GPU, float32 on CPU), bfloat16, float32, or int8 (ctranslate2 only).",
        choices=list(PRECISIONS),
    )
    limit: int | None = arg(None, "Translate only the first N rows.")
    rows_per_shard: int = arg(10_000, "Rows per Parquet shard.")
    batch_tokens: int = arg(16_384, "Padded source tokens per engine call.")
    max_batch_size: int = arg(256, "Rows per engine call, at most.")
    source_template: str | None = arg(
        None, "Source format; default: the one the merge recorded with the model."
    )
    source_prefix: str | None = arg(
        None, "Source prefix; default: the one recorded with the model."
    )
    device: str = arg("auto", "auto (this rank's GPU, else CPU), cpu, cuda or cuda:N.")
    engine_args: str | None = arg(
        None,
        "JSON object of the chosen engine's own tuning knobs, e.g. '{\"max_batch_tokens\": "
        "2048}' (ctranslate2) or '{\"gpu_memory_utilization\": 0.85}' (vllm).",
    )
    trust_remote_code: bool = arg(False, "Allow custom model code from the hub.")
    overwrite: bool = arg(False, "Replace a run written with different parameters.")
    allow_empty: bool = arg(False, "Accept an input with no rows (otherwise refused).")
    config: str | None = arg(None, "YAML file of these flags.")

    def __post_init__(self):
        if not self.model:
            raise ValueError("--model is required: the merged model directory (see `make merge`)")
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        for name in ("rows_per_shard", "batch_tokens", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {self.limit}")
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"--device {self.device}: choose auto, cpu, cuda or cuda:N")
        if self.engine_args is not None:
            try:
                tuning = json.loads(self.engine_args)
            except ValueError as err:
                raise ValueError(f"--engine_args is not valid JSON: {err}") from None
            if not isinstance(tuning, dict):
                raise ValueError("--engine_args must be a JSON object of option: value")

    @property
    def tuning(self) -> dict:
        return json.loads(self.engine_args) if self.engine_args else {}


def main(argv: list[str] | None = None) -> dict:
    args, options = parse_with_config((TranslateArguments, GenerationOptions), argv)
    rank, world = rank_and_world()
    plan = runner.prepare(args, options, rank, world)  # refusals happen here, before writing
    sink = runner.open_sink(plan)  # a refused resume is the last refusal
    setup_logging(rank, world)
    return runner.run(plan, sink)


if __name__ == "__main__":
    run(main, "serve.translate")
