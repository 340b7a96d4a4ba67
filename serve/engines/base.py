"""The one engine interface: sources in, generations out, plus what it can do.

Engines only generate. Reading, de-duplication, length sorting, token-budget
batching, failure isolation and writing live above them (serve.planner,
serve.sink), written once.

Every engine is built the same way, `Engine(model_path, EngineSettings(...), **tuning)`,
where `tuning` holds the few knobs that exist for one engine only (documented on that
engine's class); `serve.engines.create_engine` takes both as keywords.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from common.cli import arg

# `auto`: bfloat16 on CUDA; on CPU float32 (int8 is opt-in: see the README's measured
# int8 agreement). int8 is a CTranslate2 quantization; hf and vllm refuse it.
PRECISIONS = ("auto", "bfloat16", "float32", "int8")
SELECT_RULES = ("first", "score", "coverage")
# What every engine reports as a candidate's `score` (stated in the run manifest).
SCORE_DEFINITION = (
    "mean log-probability per generated token under the model's own distribution (before "
    "temperature, top_p or length penalty): the sum of the log-probabilities of the "
    "generated tokens, the end token included, divided by their count"
)


@dataclass(frozen=True)
class GenerationOptions:
    """Generation settings shared by every engine: the one home of their defaults.

    serve.translate parses this dataclass as its own flags, and training's
    validation metrics build it too. Sources differ on purpose: training keeps up
    to 2048 tokens (train.args) so no curated pair loses text, while serving cuts at
    512 because a batch's padded width, so its cost, follows its longest source and
    594K mined rows include pasted logs and data dumps (cut rows are counted).
    """

    max_new_tokens: int = arg(64, "Generation length limit.")
    min_new_tokens: int = arg(0, "Force at least this many new tokens (benchmarks).")
    num_beams: int = arg(1, "Beam width; 1 is greedy decoding.")
    max_source_length: int = arg(
        512,
        "Source token limit. Encoder-decoders truncate longer sources (counted in "
        "the manifest); decoder-only engines give such rows an error.",
    )
    num_candidates: int = arg(
        1,
        "Candidates per row: the N best beam hypotheses (needs --num_beams >= N), or N "
        "samples with --do_sample. 1 costs what it always did.",
    )
    do_sample: bool = arg(False, "Sample (with --temperature, --top_p, --seed) instead of search.")
    temperature: float = arg(1.0, "Sampling temperature (--do_sample).")
    top_p: float = arg(1.0, "Nucleus sampling: keep the smallest token set with this mass.")
    seed: int = arg(
        0,
        "Sampling seed. Each row draws from its own generator, seeded by this seed and the "
        "row's source, so a rerun gives the same output whatever the batching.",
    )
    select: str = arg(
        "first",
        "Which candidate becomes rewritten_intent: first (the engine's best), score (highest "
        "mean token log-probability), coverage (highest identifier coverage of the snippet, "
        "ties broken by score).",
        choices=list(SELECT_RULES),
    )
    keep_candidates: bool = arg(
        False, "Add a `candidates` column: every candidate's text, score and coverage."
    )

    def __post_init__(self):
        for name in ("max_new_tokens", "num_beams", "max_source_length", "num_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"--min_new_tokens must be in [0, --max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"--temperature must be > 0 and --top_p in (0, 1], got {self.temperature} "
                f"and {self.top_p}"
            )
        if self.select not in SELECT_RULES:
            raise ValueError(f"--select {self.select}: choose {', '.join(SELECT_RULES)}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("--do_sample draws each candidate with --num_beams 1")
        if not self.do_sample and self.num_candidates > self.num_beams:
            raise ValueError(
                f"--num_candidates {self.num_candidates} needs --num_beams >= "
                f"{self.num_candidates} (the best beam hypotheses) or --do_sample"
            )

    @property
    def mode(self) -> str:
        """greedy | beams | sample: what an engine must be able to do."""
        return "sample" if self.do_sample else "beams" if self.num_beams > 1 else "greedy"


@dataclass(frozen=True)
class EngineSettings:
    """What every engine is built with, under the same names."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    options: GenerationOptions = field(default_factory=GenerationOptions)
    precision: str = "auto"  # one of PRECISIONS; engines refuse what they cannot run
    cpu_threads: int | None = None  # threads on CPU (ranks sharing a CPU split its cores)
    cache_dir: str | None = None  # where an engine may keep derived files (conversions)
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Capabilities:
    name: str
    encoder_decoder: bool
    # True: a source over max_source_length is cut to fit (encoder-decoders, as in
    # training). False: such a prompt cannot be answered and becomes a per-row error
    # (cutting a decoder prompt would drop the cue that starts the answer).
    truncates_sources: bool
    device: str
    # True: hand the engine a whole (deduplicated) shard in one call; it schedules the
    # work itself (vLLM's continuous batching). False: planner token-budget batches.
    whole_shard: bool = False


class Candidate(NamedTuple):
    text: str
    num_tokens: int  # generated tokens, the end token included
    score: float  # SCORE_DEFINITION


class Generation(NamedTuple):
    """One source's candidates, in the engine's order (best first for beams)."""

    candidates: tuple[Candidate, ...]

    @property
    def text(self) -> str:
        return self.candidates[0].text

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.candidates)


def row_seed(seed: int, source: str, index: int) -> int:
    """The seed of candidate `index` of `source`: a function of the row alone, so batching,
    de-duplication and the rank layout never change what a row draws."""
    digest = hashlib.sha256(f"{seed}\0{index}\0{source}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch and vLLM take a signed int64


class Engine(ABC):
    capabilities: Capabilities
    options: GenerationOptions
    tokenizer: object  # the model's Hugging Face tokenizer

    def count_tokens(self, sources: list[str]) -> list[int]:
        """Source lengths in tokens, as the model will see them (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(sources)["input_ids"]]

    def special_tokens(self) -> int:
        """The special tokens `count_tokens` counts in every source (T5's `</s>`)."""
        return self.tokenizer.num_special_tokens_to_add()

    @abstractmethod
    def generate(self, sources: list[str]) -> list[Generation]:
        """One generation (`options.num_candidates` candidates) per source, in order."""

    def generate_batches(
        self, batches: Iterable[list[str]]
    ) -> Iterator[list[Generation] | Exception]:
        """`generate` over many batches, yielding each batch's result or its exception.

        Engines with an asynchronous API override this to overlap host work (tokenizing
        the next batch, decoding the last) with generation.
        """
        for batch in batches:
            try:
                yield self.generate(batch)
            except Exception as error:  # the planner isolates the failing rows
                yield error

    def close(self) -> None:  # noqa: B027 - optional hook, most engines need nothing
        """Release the model; the default relies on garbage collection."""


def check_precision(engine: str, precision: str, allowed: tuple[str, ...]) -> None:
    if precision not in allowed:
        raise ValueError(
            f"--precision {precision} is not available with the {engine} engine "
            f"(choose {', '.join(allowed)})"
        )
