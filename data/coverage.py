"""Identifier coverage: how much of a snippet's vocabulary an instruction mentions.

CoNaLa's annotators rewrote each intent to name the snippet's variables, arguments
and literals ("sort list `x` by key 'name'" rather than "how to sort a list?"), so
the fraction of those terms an instruction mentions is the domain's own quality
signal. One function scores the generated instructions and the two references on
the curated data (the human `rewritten_intent`, and the raw `intent` as the
do-nothing baseline), so the three numbers are comparable.

    from data.coverage import coverage
    coverage("df.groupby('city')['pop'].sum()", "sum `pop` of `df` grouped by 'city'")  # 1.0
    coverage("df.groupby('city')['pop'].sum()", "how do I group by in pandas?")  # 0.0

Terms of a snippet (a set: a name used twice counts once):

* **names**: Python `tokenize` NAME tokens that are neither keywords nor builtins
  (`len`, `sorted`, `print` say nothing about *this* snippet) nor attributes (the
  name after a `.`: `groupby` in `df.groupby`, `path` in `os.path`). Attributes are
  the library's vocabulary, not the variables, arguments and literals CoNaLa asks a
  rewrite to name; counting them lowers the human-rewrite mean on curated train
  from 0.57 to 0.50 while the raw intent barely moves. Module and variable names
  (`os`, `df`) count.
* **string literals**: the text between the quotes, as written in the source (escape
  sequences unexpanded, prefixes like `r`/`b`/`f` dropped).
* **number literals**: the token text (`10`, `0.5`, `1e-3`).

A snippet that does not tokenize (an unclosed bracket, a REPL fragment, half an
indented block) falls back to regexes for the same three kinds.

When a term counts as mentioned:

* a name: it appears as a whole word in the text, case-insensitively (`DataFrame`
  matches "dataframe"; `x` does not match "xs");
* a string literal: its content appears in the text as a substring, case-sensitively,
  with or without the quotes (`'%Y-%m-%d'` is mentioned by "format %Y-%m-%d"). An
  empty literal (`''`) counts as mentioned when the text contains `''` or `""`;
* a number: it appears in the text not glued to other digits, letters or a dot.

Coverage is mentioned terms / terms, in [0, 1]. A snippet with no terms at all
(`print()`, `exit()`) or a null snippet scores **None**: there is nothing to
mention, and 0 or 1 would both bias the mean; the reports count such rows apart.
A null text scores as the empty string (0.0 when the snippet has terms).
"""

from __future__ import annotations

import builtins
import io
import keyword
import math
import re
import tokenize
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

_SKIP_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
# Line breaks and comments between `obj.` and `attr` do not make `attr` a variable.
_LAYOUT = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
_WORD = re.compile(r"[A-Za-z0-9_]+")
_STRING_PREFIX = re.compile(r"^[A-Za-z]*")
# Fallback patterns, applied in this order: strings first, so that words inside a
# string literal are not also taken as names.
_FALLBACK_STRING = re.compile(
    r"'''.*?'''|\"\"\".*?\"\"\"|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"", re.S
)
_FALLBACK_NAME = re.compile(r"(?<![.\w])[A-Za-z_][A-Za-z0-9_]*")
_FALLBACK_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def snippet_terms(snippet: str | None) -> tuple[frozenset, frozenset, frozenset]:
    """(names, string contents, numbers) of a snippet; `tokenize` first, regexes if it fails."""
    if not snippet:
        return frozenset(), frozenset(), frozenset()
    try:
        return _tokenize_terms(snippet)
    except (tokenize.TokenError, SyntaxError, ValueError):
        return _regex_terms(snippet)


def _tokenize_terms(snippet: str):
    names, strings, numbers = set(), set(), set()
    # Materialize first: tokenize raises part-way through a bad snippet, and a half
    # list of terms would silently score against fewer terms than the snippet has.
    tokens = list(tokenize.generate_tokens(io.StringIO(snippet).readline))
    previous = ""
    if any(tok.type == tokenize.ERRORTOKEN and tok.string.strip() for tok in tokens):
        # 3.11's tokenize reports an unclosed quote as an ERRORTOKEN rather than raising.
        raise tokenize.TokenError("error token")
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.string not in _SKIP_NAMES and previous != ".":
            names.add(tok.string)
        elif tok.type == tokenize.STRING:
            strings.add(_string_content(tok.string))
        elif tok.type == tokenize.NUMBER:
            numbers.add(tok.string)
        if tok.type not in _LAYOUT:
            previous = tok.string
    return frozenset(names), frozenset(strings), frozenset(numbers)


def _regex_terms(snippet: str):
    strings = {_string_content(m.group()) for m in _FALLBACK_STRING.finditer(snippet)}
    rest = _FALLBACK_STRING.sub(" ", snippet)
    names = {n for n in _FALLBACK_NAME.findall(rest) if n not in _SKIP_NAMES}
    numbers = set(_FALLBACK_NUMBER.findall(rest))
    return frozenset(names), frozenset(strings), frozenset(numbers)


def _string_content(literal: str) -> str:
    body = _STRING_PREFIX.sub("", literal)
    quote = 3 if body[:3] in ("'''", '"""') else 1
    return body[quote:-quote] if len(body) >= 2 * quote else body[quote:]


def coverage(snippet: str | None, text: str | None) -> float | None:
    """Fraction of the snippet's terms that `text` mentions; None if it has no terms."""
    names, strings, numbers = snippet_terms(snippet)
    total = len(names) + len(strings) + len(numbers)
    if total == 0:
        return None
    text = text or ""
    words = {w.lower() for w in _WORD.findall(text)}
    hits = sum(name.lower() in words for name in names)
    hits += sum(_mentions_string(s, text) for s in strings)
    hits += sum(_mentions_number(n, text) for n in numbers)
    return hits / total


def _mentions_string(content: str, text: str) -> bool:
    if not content:
        return "''" in text or '""' in text
    return content in text


def _mentions_number(number: str, text: str) -> bool:
    pattern = r"(?<![A-Za-z0-9_.])" + re.escape(number) + r"(?![A-Za-z0-9_]|\.\d)"
    return re.search(pattern, text) is not None


def coverage_column(snippets: Iterable, texts: Iterable) -> list[float | None]:
    return [coverage(s, t) for s, t in zip(snippets, texts, strict=True)]


def curated_references(table: pa.Table) -> dict[str, list[float | None]]:
    """Coverage of the human rewrite and of the raw intent on the same curated rows.

    Only rows that have a human rewrite are scored, so both references describe the
    same snippets and differ only in the text.
    """
    rows = table.filter(pc.is_valid(table.column("rewritten_intent")))
    snippets = rows.column("snippet").to_pylist()
    return {
        "human_rewrite": coverage_column(snippets, rows.column("rewritten_intent").to_pylist()),
        "raw_intent": coverage_column(snippets, rows.column("intent").to_pylist()),
    }


class Histogram:
    """Fixed-bin histogram over [lo, hi] with an exact mean: flat memory however many rows.

    A quantile is the mean of the values in the bin where it falls, so it is exact
    for the discrete values coverage takes most (0, 1/2, 2/3, 1) and within one bin
    width (1e-3 by default) otherwise: finer than any threshold a user would pick.
    """

    def __init__(self, bins: int = 1000, lo: float = 0.0, hi: float = 1.0):
        self.bins, self.lo, self.hi = bins, lo, hi
        self.counts = [0] * bins
        self.sums = [0.0] * bins
        self.n = self.none = 0
        self.total = 0.0

    def add(self, value: float | None) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.none += 1
            return
        self.n += 1
        self.total += value
        frac = (min(max(value, self.lo), self.hi) - self.lo) / (self.hi - self.lo)
        index = min(int(frac * self.bins), self.bins - 1)
        self.counts[index] += 1
        self.sums[index] += value

    def extend(self, values: Iterable[float | None]) -> Histogram:
        for value in values:
            self.add(value)
        return self

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        target, seen = q * self.n, 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= target and count:
                return self.sums[i] / count
        return self.hi

    def coarse(self, bins: int = 20) -> list[int]:
        """Counts regrouped into `bins` equal bins (for plots)."""
        step = self.bins // bins
        return [sum(self.counts[i : i + step]) for i in range(0, step * bins, step)]

    def summary(self, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
        return {
            "n": self.n,
            "none": self.none,
            "mean": None if self.mean is None else round(self.mean, 4),
            **{f"p{round(q * 100):02d}": _round(self.quantile(q)) for q in quantiles},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
