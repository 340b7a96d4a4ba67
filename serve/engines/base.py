"""The one engine interface: sources in, generations out, plus what it can do.

Engines only generate. Reading, de-duplication, length sorting, token-budget
batching and writing live above them (serve.planner, serve.sink), written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationOptions:
    """Option names shared by every engine."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    num_beams: int = 1
    max_source_length: int = 512

    def __post_init__(self):
        for name in ("max_new_tokens", "num_beams", "max_source_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be in [0, max_new_tokens]")


@dataclass(frozen=True)
class Capabilities:
    name: str
    encoder_decoder: bool
    # True: a source over max_source_length is cut to fit (encoder-decoders, as in
    # training). False: such a prompt cannot be answered and becomes a per-row error
    # (cutting a decoder prompt would drop the cue that starts the answer).
    truncates_sources: bool
    device: str


class Engine(ABC):
    """Subclasses take `(model_path, *, device="auto", options, **engine_specific)`."""

    capabilities: Capabilities
    options: GenerationOptions
    generated_tokens: int = 0

    @abstractmethod
    def count_tokens(self, sources: list[str]) -> list[int]:
        """Source lengths in tokens, as the model will see them (special tokens included)."""

    @abstractmethod
    def generate(self, sources: list[str]) -> list[str]:
        """One output per source, in order. Adds to `generated_tokens`."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines need nothing
        """Release the model; the default relies on garbage collection."""
