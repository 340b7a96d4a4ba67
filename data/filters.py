"""Decontamination and quality filters for the instruction dataset, counted as a funnel.

Every candidate row (curated-train rows first, then each translated mined row) goes
through the steps below in this order; the first step that rejects it is the one
that counts it, so the funnel adds up: input = output + the sum of the drops.

    decontamination (never optional)
      contaminated_question_id   question_id is a curated-test question
      contaminated_snippet       the snippet is a curated-test one as code: equal after
                                 any of SNIPPET_RULES (see `snippet_keys`)
    quality
      translate_error            the engine reported an error for the row
      empty_output               null or blank snippet: the pair would have no output
      empty_instruction          instruction null, or nothing but whitespace and
                                 invisible characters (zero-width, bidi controls)
      degenerate_repetition      a word n-gram (n <= repetition_ngram) repeated
                                 >= repetition_repeats times back to back
      length                     instruction words outside [min_words, max_words], or
                                 over MAX_WORD_CHARS characters per allowed word
      min_prob                   mining confidence under min_prob, or not a number in
                                 [0, 1] while min_prob is set (mined rows only)
      min_score                  the model's score (mean log-probability per generated
                                 token) under min_score, or null or not finite (NaN)
                                 while min_score is set: a run written before scores
                                 existed cannot show it meets the bar (mined rows only)
      min_coverage               identifier coverage under min_coverage
      duplicate                  (instruction, output) pair already kept

Decontamination comes first so that every benchmark row is counted under its
contamination reason even when it would also fail a quality filter.

Memory stays flat in rows except for the duplicate check, which keeps one 64-bit
hash per kept row in a sorted NumPy array (8 bytes: under 5 MB for 594K rows),
not the strings, nor a Python set of ints (~100 bytes per row with its table).
"""

from __future__ import annotations

import hashlib
import io
import math
import tokenize
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data.coverage import Histogram, coverage

DECONTAMINATION = ("contaminated_question_id", "contaminated_snippet")
# How a snippet is compared with the curated-test ones, loosest last; the funnel counts
# each contaminated row under the first rule that caught it.
SNIPPET_RULES = ("text", "unicode", "tokens")
CONTAMINATION = {
    "question_id": "contaminated_question_id",
    **dict.fromkeys(SNIPPET_RULES, "contaminated_snippet"),
}
# Tokens that carry no code: what a copy can add or drop without changing the program.
LAYOUT_TOKENS = frozenset(
    {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
     tokenize.ENDMARKER}
)  # fmt: skip
QUALITY = (
    "translate_error",
    "empty_output",
    "empty_instruction",
    "degenerate_repetition",
    "length",
    "min_prob",
    "min_score",
    "min_coverage",
    "duplicate",
)
REASONS = DECONTAMINATION + QUALITY
MAX_WORD_CHARS = 30  # a "word" longer than this is a run-on token, not prose
# Mean log-probabilities per token: below -10 a text is noise, and the histogram keeps
# the exact mean of the values it clips into its first bin.
SCORE_RANGE = (-10.0, 0.0)


def normalize_snippet(snippet: str | None) -> str:
    """Whitespace-collapsed snippet: indentation and line breaks do not hide a copy."""
    return " ".join((snippet or "").split())


def unicode_normal(snippet: str) -> str:
    """NFKC (how Python itself reads identifiers: fullwidth, ligatures, NFD accents) without
    format characters (zero-width, bidi, soft hyphen: category Cf). Line breaks are kept."""
    text = unicodedata.normalize("NFKC", snippet)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def code_tokens(snippet: str) -> list[str] | None:
    """The Python token strings of `snippet` without comments, line breaks and indentation,
    or None where it does not tokenize (or holds no code at all)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(snippet).readline)
        kept = [t.string for t in tokens if t.type not in LAYOUT_TOKENS and t.string.strip()]
    except (tokenize.TokenError, SyntaxError):  # unclosed bracket or string, bad dedent
        return None
    return kept or None


def snippet_keys(snippet: str):
    """(rule, 64-bit key) for each of SNIPPET_RULES, computed lazily, loosest last:
    text     whitespace collapsed (indentation and line breaks)
    unicode  the same after `unicode_normal`
    tokens   `code_tokens` of the unicode-normal text; where it does not tokenize,
             the unicode key again (so a snippet that is not Python still matches)."""
    yield "text", hash64(normalize_snippet(snippet))
    normal = unicode_normal(snippet)
    yield "unicode", hash64(normalize_snippet(normal))
    tokens = code_tokens(normal)
    yield "tokens", hash64("tokens", *tokens) if tokens else hash64(normalize_snippet(normal))


def hash64(*parts: str) -> int:
    """64-bit blake2b of the parts, each prefixed by its length, so no two different
    tuples encode alike (a separator character could occur inside a part)."""
    encoded = "".join(f"{len(part)}:{part}" for part in parts)
    digest = hashlib.blake2b(encoded.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def visible(text: str) -> str:
    """The text without whitespace, control, format (zero-width, bidi) or unassigned
    characters: what a reader would actually see."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "CZ")


def usable_prob(prob) -> float | None:
    """A mining confidence, or None when it is missing or not a probability (NaN, inf)."""
    return prob if prob is not None and 0.0 <= prob <= 1.0 else None


def usable_score(score) -> float | None:
    """The model's score, or None when it is missing or not finite: NaN compares False
    with any bar, and -inf would make the histogram's mean -inf."""
    return score if score is not None and math.isfinite(score) else None


class Decontaminator:
    """Knows the curated-test question ids and each snippet's keys (500 rows: tiny)."""

    def __init__(self, question_ids, snippets):
        self.question_ids = frozenset(int(q) for q in question_ids if q is not None)
        keys = [pair for s in snippets if s and visible(s) for pair in snippet_keys(s)]
        self.snippets = {rule: frozenset(k for r, k in keys if r == rule) for rule in SNIPPET_RULES}

    @classmethod
    def from_table(cls, curated_test: pa.Table) -> Decontaminator:
        return cls(
            curated_test.column("question_id").to_pylist(),
            curated_test.column("snippet").to_pylist(),
        )

    def is_empty(self) -> bool:
        return not self.question_ids and not self.snippets["text"]

    def reason(self, question_id: int | None, snippet: str | None) -> str | None:
        return CONTAMINATION.get(self.rule(question_id, snippet))

    def rule(self, question_id: int | None, snippet: str | None) -> str | None:
        """What makes the row a curated-test row: `question_id`, a SNIPPET_RULES name, or None."""
        if question_id is not None and question_id in self.question_ids:
            return "question_id"
        if snippet and visible(snippet):
            for rule, key in snippet_keys(snippet):
                if key in self.snippets[rule]:
                    return rule
        return None


def repeated_ngram(text: str, max_n: int, repeats: int) -> bool:
    """True if some word n-gram (1 <= n <= max_n) occurs `repeats` times back to back.

    This is the signature of a decoder stuck in a loop ("sort the list of list of
    list of list of"); ordinary prose rarely repeats even one word three times in a row.
    """
    words = text.split()
    for n in range(1, min(max_n, len(words) // max(repeats, 1)) + 1):
        for i in range(len(words) - n * repeats + 1):
            gram = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return False


class HashSet:
    """A set of 64-bit hashes at ~8 bytes each: a sorted array plus a small pending set.

    New hashes go to a Python set; every `merge_every` of them are merged into the
    sorted array, so the Python-object overhead is bounded by `merge_every`, not rows.
    """

    def __init__(self, merge_every: int = 8192):
        self.merge_every = merge_every
        self.sorted = np.empty(0, dtype=np.uint64)
        self.pending: set[int] = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.pending)

    def add(self, key: int) -> bool:
        """Add `key`; return False if it was already there."""
        if key in self.pending:
            return False
        index = int(np.searchsorted(self.sorted, np.uint64(key)))
        if index < len(self.sorted) and int(self.sorted[index]) == key:
            return False
        self.pending.add(key)
        if len(self.pending) >= self.merge_every:
            fresh = np.fromiter(self.pending, dtype=np.uint64, count=len(self.pending))
            self.sorted = np.union1d(self.sorted, fresh)
            self.pending.clear()
        return True


@dataclass(frozen=True)
class FilterSettings:
    """The tunable knobs; their defaults and help live on the CLI dataclass."""

    repetition_ngram: int = 4
    repetition_repeats: int = 4
    min_words: int = 1
    max_words: int | None = 100
    min_prob: float | None = None
    min_score: float | None = None
    min_coverage: float | None = None
    dedup: bool = True


class Funnel:
    """Counts per step, plus the distributions a user needs to choose thresholds."""

    def __init__(self):
        self.input = {"curated": 0, "mined": 0}
        self.dropped = dict.fromkeys(REASONS, 0)
        # The decontamination drops again, by the rule that caught each row.
        self.contamination = dict.fromkeys(("question_id", *SNIPPET_RULES), 0)
        self.output = {"curated": 0, "mined": 0}
        # prob of the mined rows reaching the min_prob step (whether or not it is set).
        self.prob = Histogram()
        # score of the mined rows reaching the min_score step (whether or not it is set).
        self.score = Histogram(lo=SCORE_RANGE[0], hi=SCORE_RANGE[1])
        # Kept mined rows that carry their candidates: the kept text's coverage against
        # the first candidate's, i.e. what --select bought.
        self.coverage_selected = Histogram()
        self.coverage_first = Histogram()
        # coverage of the kept rows, all and mined only.
        self.coverage = Histogram()
        self.coverage_mined = Histogram()

    def table(self) -> list[tuple[str, int, int]]:
        """(step, dropped, remaining) rows, starting with the input."""
        remaining = sum(self.input.values())
        rows = [("input", 0, remaining)]
        for reason in REASONS:
            remaining -= self.dropped[reason]
            rows.append((reason, self.dropped[reason], remaining))
        return rows

    def as_dict(self) -> dict:
        return {
            "input": dict(self.input),
            "dropped": dict(self.dropped),
            "contamination": dict(self.contamination),
            "output": dict(self.output),
            "prob": self.prob.summary(),
            "score": self.score.summary(),
            "coverage_selected": self.coverage_selected.summary(),
            "coverage_first_candidate": self.coverage_first.summary(),
            "coverage": self.coverage.summary(),
            "coverage_mined": self.coverage_mined.summary(),
        }


class RowFilter:
    """Applies the funnel to one row at a time; `keep` returns (kept, coverage)."""

    def __init__(self, settings: FilterSettings, decontaminator: Decontaminator):
        self.settings = settings
        self.decontaminator = decontaminator
        self.funnel = Funnel()
        self._seen = HashSet()

    def keep(
        self, source, question_id, snippet, instruction, error, prob, score=None, candidates=None
    ) -> tuple[bool, float | None]:
        """`score` is the model's, `candidates` the row's n-best list (None: not kept)."""
        self.funnel.input[source] += 1
        reason, cov = self._reason(source, question_id, snippet, instruction, error, prob, score)
        if reason is not None:
            self.funnel.dropped[reason] += 1
            return False, cov
        self.funnel.output[source] += 1
        self.funnel.coverage.add(cov)
        if source == "mined":
            self.funnel.coverage_mined.add(cov)
        if candidates:
            self.funnel.coverage_selected.add(cov)
            self.funnel.coverage_first.add(candidates[0]["coverage"])
        return True, cov

    def _reason(self, source, question_id, snippet, instruction, error, prob, score):
        s = self.settings
        rule = self.decontaminator.rule(question_id, snippet)
        if rule:
            self.funnel.contamination[rule] += 1
            return CONTAMINATION[rule], None
        if error is not None:
            return "translate_error", None
        if snippet is None or not snippet.strip():
            return "empty_output", None
        if instruction is None or not visible(instruction):
            return "empty_instruction", None
        if s.repetition_ngram and repeated_ngram(
            instruction, s.repetition_ngram, s.repetition_repeats
        ):
            return "degenerate_repetition", None
        words = len(instruction.split())
        if words < s.min_words or (
            s.max_words and (words > s.max_words or len(instruction) > s.max_words * MAX_WORD_CHARS)
        ):
            return "length", None
        if source == "mined":
            prob = usable_prob(prob)
            if prob is not None:
                self.funnel.prob.add(prob)
            if s.min_prob is not None and (prob is None or prob < s.min_prob):
                return "min_prob", None
            score = usable_score(score)
            self.funnel.score.add(score)
            if s.min_score is not None and (score is None or score < s.min_score):
                return "min_score", None
        cov = coverage(snippet, instruction)
        # A row whose snippet has no identifiers (coverage None) cannot be judged: kept.
        if s.min_coverage is not None and cov is not None and cov < s.min_coverage:
            return "min_coverage", cov
        # `add` returns False when the pair was already kept.
        if s.dedup and not self._seen.add(hash64(instruction, snippet or "")):
            return "duplicate", cov
        return None, cov
