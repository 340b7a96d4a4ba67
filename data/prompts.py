"""Turn CoNaLa rows into model sources (and, for training, targets).

The default source reproduces the original project exactly: `intent + "\\n" + snippet`.
A per-config prefix (UL2's `[S2S] ` mode token) goes in front. Decoder-only configs
extend the template with a cue such as `"\\nRewritten intent: "` so the prompt ends
where the answer starts.

Null intent: rendered as the empty string, so the source is the snippet alone
(after the newline). Mined has such rows and each still deserves an output; in
training the snippet carries enough signal that dropping them would only lose data.
A row whose intent *and* snippet are both empty has no source at all and is an
error (translate records it per row; training drops it and counts it).
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

DEFAULT_TEMPLATE = "{intent}\n{snippet}"
TEMPLATE_FILE = "source_template.json"
_FIELDS = {"intent", "snippet"}


@dataclass(frozen=True)
class SourceTemplate:
    template: str = DEFAULT_TEMPLATE
    prefix: str = ""

    def __post_init__(self):
        if not isinstance(self.template, str) or not isinstance(self.prefix, str):
            raise ValueError("--source_template and --source_prefix must be strings")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.template) if name}
        except ValueError as err:
            raise ValueError(f"--source_template {self.template!r}: {err}") from None
        unknown = names - _FIELDS
        if unknown:
            raise ValueError(
                f"--source_template uses unknown field(s) {sorted(unknown)}; "
                f"only {{intent}} and {{snippet}} are available"
            )
        try:
            # A sample row catches what parsing lets through: positional `{}`, format specs
            # such as `{snippet:d}` and conversions such as `{snippet!z}`.
            self.template.format(intent="sample intent", snippet="sample snippet")
        except (ValueError, IndexError, KeyError) as err:
            raise ValueError(
                f"--source_template {self.template!r} cannot format a row: "
                f"{type(err).__name__}: {err}; use {{intent}} and {{snippet}} only"
            ) from None
        if "snippet" not in names:
            raise ValueError("--source_template must contain {snippet}")

    def format(self, intent: str | None, snippet: str | None) -> str:
        if not (intent or "").strip() and not (snippet or "").strip():
            raise ValueError("both intent and snippet are empty")
        return self.prefix + self.template.format(intent=intent or "", snippet=snippet or "")

    def save(self, directory: str | Path) -> None:
        """Record the template beside a model so inference formats sources the same way."""
        Path(directory, TEMPLATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SourceTemplate | None:
        path = Path(directory, TEMPLATE_FILE)
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a valid source template ({err})") from None


@dataclass
class Pairs:
    """Training pairs plus the accounting of what was dropped and why."""

    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    dropped_null_target: int = 0
    dropped_empty_source: int = 0
    null_intent: int = 0

    def report(self) -> str:
        return (
            f"{len(self.sources)} pairs; dropped {self.dropped_null_target} with null/empty "
            f"rewritten_intent and {self.dropped_empty_source} with no intent or snippet; "
            f"{self.null_intent} kept with a null intent"
        )


def make_pairs(table: pa.Table, template: SourceTemplate) -> Pairs:
    """Build (source, target) pairs from a curated table, dropping unusable rows."""
    pairs = Pairs()
    columns = table.select(["intent", "snippet", "rewritten_intent"]).to_pydict()
    for intent, snippet, target in zip(
        columns["intent"], columns["snippet"], columns["rewritten_intent"]
    ):
        if target is None or not target.strip():
            pairs.dropped_null_target += 1
            continue
        try:
            source = template.format(intent, snippet)
        except ValueError:
            pairs.dropped_empty_source += 1
            continue
        pairs.null_intent += intent is None
        pairs.sources.append(source)
        pairs.targets.append(target)
    return pairs
