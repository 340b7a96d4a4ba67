"""The dataset card (README.md with a `datasets` YAML header) and its PNG figure.

Both are rendered from the one stats dict `data.instruct` also writes to
stats.json, so the card, the figure and the machine-readable numbers never disagree.
The YAML `configs` block declares `data/train-*.parquet` as the train split, which
is what lets `datasets.load_dataset(FOLDER)` (or the hub repo id) load it directly.
"""

from __future__ import annotations

import json
import shlex
import unicodedata
from pathlib import Path

FIGURE = "coverage_funnel.png"

# Looked up, not guessed (checked when this stage was written):
# - the neulab/conala dataset card declares `license: mit` (hub commit 7f6a869,
#   https://huggingface.co/datasets/neulab/conala/commit/7f6a8697fce106967ff575118f19bcce140e9e46);
# - CoNaLa is mined from Stack Overflow (Yin et al., MSR 2018; https://conala-corpus.github.io),
#   and Stack Overflow content is user-contributed under CC BY-SA with attribution
#   required (https://stackoverflow.blog/2009/06/25/attribution-required/).
# Share-alike terms follow the text into derived works, so the card declares CC BY-SA 4.0.
LICENSE = "cc-by-sa-4.0"
LICENSE_TEXT = """\
- **CoNaLa** (Yin, Deng, Chen, Vasilescu and Neubig, *Learning to Mine Aligned Code and
  Natural Language Pairs from Stack Overflow*, MSR 2018, doi:10.1145/3196398.3196408;
  <https://conala-corpus.github.io>). The `neulab/conala` dataset card on the Hugging Face
  Hub declares the MIT license
  ([commit 7f6a869](https://huggingface.co/datasets/neulab/conala/commit/7f6a8697fce106967ff575118f19bcce140e9e46)).
- The intents, snippets and question ids come from **Stack Overflow**, whose user
  contributions are licensed CC BY-SA (2.5, 3.0 or 4.0 depending on the post date) with
  attribution required
  ([Stack Overflow blog, "Attribution Required"](https://stackoverflow.blog/2009/06/25/attribution-required/)).
  Each row keeps its `question_id`, so its source is
  `https://stackoverflow.com/questions/<question_id>`.
- Because share-alike terms carry over to derived text, this dataset is published under
  **CC BY-SA 4.0**. The `instruction` column of `source=mined` rows is model output.
  This is a reading of the sources' stated terms, not legal advice."""

COLUMNS = {
    "instruction": "the instruction: a model's rewritten intent (mined) or the human one (curated)",
    "output": "the Python snippet",
    "source": "`mined` (model-written instruction) or `curated` (CoNaLa's human rewrite)",
    "id": "the mined pair id; `curated-<question_id>-<n>` for the n-th curated row of a question",
    "question_id": "Stack Overflow question id",
    "parent_answer_post_id": "Stack Overflow answer id (null for curated rows)",
    "prob": "CoNaLa's mining confidence (null for curated rows)",
    "intent": "the original intent (the question title)",
    "coverage": "identifier coverage of `output` by `instruction` (null: the snippet has no "
    "identifiers or literals)",
    "score": "the model's mean log-probability per generated token of `instruction` (null for "
    "curated rows and for translations written before scores existed)",
}


def write_figure(path: Path, stats: dict) -> None:
    """Coverage histograms (dataset vs the two references), the model's scores, the funnel."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5))
    hists = stats["coverage"]["histograms"]
    bins = len(hists["dataset"])
    edges = [i / bins for i in range(bins + 1)]
    labels = {
        "dataset": "this dataset",
        "human_rewrite": "human rewrite (curated train)",
        "raw_intent": "raw intent (curated train)",
    }
    for key, label in labels.items():
        counts = hists[key]
        total = sum(counts) or 1
        mean = stats["coverage"][key]["mean"]
        left.stairs([c / total for c in counts], edges, label=f"{label}, mean {mean}", lw=2)
    left.set_xlabel("identifier coverage (fraction of snippet names/literals mentioned)")
    left.set_ylabel("fraction of rows")
    left.set_title("Identifier coverage")
    left.legend(fontsize=8)
    _score_panel(middle, stats["score"])
    steps = stats["funnel_table"]
    names = [step for step, _, _ in steps]
    remaining = [rows for _, _, rows in steps]
    right.barh(names[::-1], remaining[::-1], color="tab:blue")
    for y, (_, dropped, rows) in enumerate(steps[::-1]):
        right.text(
            rows, y, f" {rows:,}" + (f" (-{dropped:,})" if dropped else ""), va="center", fontsize=8
        )
    right.set_xlabel("rows remaining after the step")
    right.set_title("Filter funnel")
    right.set_xlim(0, max(max(remaining), 1) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _score_panel(axes, score: dict) -> None:
    lo, hi = score["range"]
    counts = score["histogram"]
    edges = [lo + (hi - lo) * i / len(counts) for i in range(len(counts) + 1)]
    axes.stairs(counts, edges, fill=True, color="tab:green")
    axes.set_xlabel(f"score: mean log-prob per generated token (clipped to [{lo:g}, {hi:g}])")
    axes.set_ylabel("mined rows")
    axes.set_title(f"Model score (n={score['n']:,}, no score: {score['none']:,})")


def write_card(path: Path, stats: dict) -> None:
    path.write_text(render_card(stats), encoding="utf-8")


def render_card(stats: dict) -> str:
    params = stats["translations"]["params"]
    return "\n".join(
        [
            _yaml_header(stats["rows"]),
            "# CoNaLa instructions: rewritten intents for the mined pairs",
            "",
            "Python instruction-tuning pairs built from CoNaLa. Each `instruction` is a "
            "rewritten intent: the Stack Overflow question revised to mention the snippet's "
            "variable names, arguments and literals, as CoNaLa's annotators did for its 2,379 "
            "curated pairs. For the ~594K mined pairs a fine-tuned model wrote it; the human "
            "rewrites of curated train are included as `source=curated`. Rows from CoNaLa's "
            "curated **test** questions are removed (see *Decontamination*), so the test set "
            "stays usable as a benchmark.",
            "",
            "```python",
            "from datasets import load_dataset",
            'ds = load_dataset("PATH_OR_REPO_ID", split="train")',
            "```",
            "",
            f"![identifier coverage, model score and filter funnel]({FIGURE})",
            "",
            f"**{stats['rows']:,} rows** in {len(stats['shards'])} Parquet file(s) under `data/`.",
            "",
            "## Columns",
            "",
            "| column | meaning |",
            "|---|---|",
            *(f"| `{name}` | {text} |" for name, text in COLUMNS.items()),
            "",
            "## Sources and license",
            "",
            LICENSE_TEXT,
            "",
            "## Model and generation settings",
            "",
            *_settings(params, stats["translations"]),
            *_selection(stats["selection"]),
            "",
            "## Filter funnel",
            "",
            *_funnel(stats),
            "",
            "## Identifier coverage",
            "",
            *_coverage(stats["coverage"]),
            "",
            "## Sample rows",
            "",
            "Control characters are shown escaped (`\\n`, `\\t`, `\\x..`).",
            "",
            "| source | instruction | output | coverage |",
            "|---|---|---|---|",
            *(
                f"| {row['source']} | {_cell(row['instruction'])} | {_cell(row['output'])} | "
                f"{_num(row['coverage'])} |"
                for row in stats["samples"]
            ),
            "",
            "## How it was made",
            "",
            "Translation (reconstructed from the translations' manifest.json):",
            "",
            "```bash",
            _translate_command(params),
            "```",
            "",
            "This dataset:",
            "",
            "```bash",
            stats["command"],
            "```",
            "",
            "`stats.json` beside this card holds every number above, machine-readable.",
            "",
        ]
    )


def _yaml_header(rows: int) -> str:
    size = next(
        (
            label
            for limit, label in (
                (1_000, "n<1K"),
                (10_000, "1K<n<10K"),
                (100_000, "10K<n<100K"),
                (1_000_000, "100K<n<1M"),
            )
            if rows < limit
        ),
        "1M<n<10M",
    )
    return f"""---
license: {LICENSE}
language:
- en
- code
pretty_name: CoNaLa instructions (rewritten intents)
task_categories:
- text-generation
tags:
- code
- python
- conala
- instruction-tuning
size_categories:
- {size}
source_datasets:
- neulab/conala
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
"""


def _settings(params: dict, translations: dict) -> list[str]:
    generation = params.get("generation", {})
    template = params.get("source_template", {})
    lines = [
        f"- model: `{params.get('model')}`"
        + (
            f" (fingerprint `{params['model_fingerprint']}`)"
            if params.get("model_fingerprint")
            else ""
        ),
        f"- engine: `{params.get('engine')}`, precision `{params.get('precision')}`",
        "- generation: " + ", ".join(f"{k}={v}" for k, v in generation.items()),
        f"- source template: `{_cell(json.dumps(template))}`",
        f"- translated rows read: {translations['rows_read']:,} from "
        + ", ".join(f"`{d}`" for d in translations["directories"]),
    ]
    lines += [f"- **warning**: {w}" for w in translations["warnings"]]
    return lines


def _selection(selection: dict) -> list[str]:
    n, rule = selection["num_candidates"], selection["select"]
    mode = "samples" if selection["do_sample"] else "beam hypotheses"
    lines = [
        f"- selection: `rewritten_intent` is the `{rule}` candidate of {n}"
        + (f" ({mode})" if n > 1 else " (one generation per row)")
    ]
    if selection["rows_with_candidates"]:
        lines.append(
            f"- what selection bought, over the {selection['rows_with_candidates']:,} kept rows "
            f"that carry their candidates: mean identifier coverage "
            f"{_num(selection['coverage_kept'])} for the kept text vs "
            f"{_num(selection['coverage_first_candidate'])} for the first candidate"
        )
    return lines


def _funnel(stats: dict) -> list[str]:
    funnel = stats["funnel"]
    settings = stats["settings"]
    prob = funnel["prob"]
    lines = [
        f"Input: {funnel['input']['curated']:,} curated-train rows with a human rewrite "
        f"and {funnel['input']['mined']:,} translated mined rows. Each row is counted at "
        "the first step that drops it.",
        "",
        "| step | dropped | remaining |",
        "|---|---:|---:|",
        *(f"| {step} | {dropped:,} | {rows:,} |" for step, dropped, rows in stats["funnel_table"]),
        "",
        *_decontamination(funnel["contamination"]),
        "",
        f"Settings: min_words={settings['min_words']}, max_words={settings['max_words']}, "
        f"repetition_ngram={settings['repetition_ngram']}, "
        f"repetition_repeats={settings['repetition_repeats']}, min_prob={settings['min_prob']}, "
        f"min_score={settings['min_score']}, "
        f"min_coverage={settings['min_coverage']}, dedup={settings['dedup']}.",
        "",
        f"`prob` of the mined rows reaching the min_prob step (n={prob['n']:,}): mean "
        f"{_num(prob['mean'])}, p05 {_num(prob['p05'])}, p25 {_num(prob['p25'])}, median "
        f"{_num(prob['p50'])}, p75 {_num(prob['p75'])}, p95 {_num(prob['p95'])}.",
        "",
        *_score(stats["score"]),
    ]
    return lines


def _decontamination(caught: dict) -> list[str]:
    return [
        "Decontamination (always on): a row is dropped if its `question_id` is a curated-test "
        "question, or if its snippet is a curated-test snippet as code: equal with whitespace "
        "collapsed (`text`), or after Unicode NFKC and the removal of invisible format "
        "characters (`unicode`), or as Python tokens without comments and layout (`tokens`; "
        "a snippet that does not tokenize is compared as normalised text). Rows caught, by "
        "the first rule that caught them: "
        + ", ".join(f"{rule} {count:,}" for rule, count in caught.items())
        + ".",
    ]


def _score(score: dict) -> list[str]:
    if not score["n"] and not score["none"]:
        return ["`score`: no mined row reached the min_score step, so there is none to report."]
    if not score["n"]:
        return [
            f"`score`: none of the {score['none']:,} mined rows reaching the min_score step "
            "has one (translations written before scores existed)."
        ]
    return [
        f"`score` ({score['definition'] or 'mean log-probability per generated token'}) of "
        f"the mined rows reaching the min_score step (n={score['n']:,}, without a score: "
        f"{score['none']:,}): mean {_num(score['mean'])}, p05 {_num(score['p05'])}, p25 "
        f"{_num(score['p25'])}, median {_num(score['p50'])}, p75 {_num(score['p75'])}, p95 "
        f"{_num(score['p95'])}. With --min_score a row without a score (null or NaN) is dropped: "
        "it cannot show that it meets the bar.",
    ]


def _coverage(cov: dict) -> list[str]:
    rows = (
        ("this dataset", cov["dataset"]),
        ("this dataset, mined rows", cov["dataset_mined"]),
        ("human rewrite (curated train)", cov["human_rewrite"]),
        ("raw intent (curated train)", cov["raw_intent"]),
    )
    return [
        "The fraction of a snippet's identifiers and literals (names that are not keywords, "
        "builtins or attributes; string and number literals) that the text mentions; see "
        "`data/coverage.py` for the exact rules. The references score the human "
        "`rewritten_intent` and the raw `intent` of the same curated-train rows with the same "
        "function: the raw intent is the do-nothing baseline. Rows whose snippet has no "
        "identifiers are not scored (`none`).",
        "",
        "| text | rows scored | none | mean | p25 | median | p75 |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {s['n']:,} | {s['none']:,} | {_num(s['mean'])} | {_num(s['p25'])} | "
            f"{_num(s['p50'])} | {_num(s['p75'])} |"
            for name, s in rows
        ),
    ]


def _translate_command(params: dict) -> str:
    generation = params.get("generation", {})
    engine = params.get("engine")
    precision = "compute_type" if engine == "ctranslate2" else "dtype"
    parts = [
        f"python -m serve.translate --model {params.get('model')}",
        f"--engine {engine}",
        f"--{precision} {params.get('precision')}",
    ]
    parts += [f"--{key} {value}" for key, value in generation.items()]
    template = params.get("source_template") or {}
    if "template" in template:
        parts.append(f"--source_template {shlex.quote(template['template'])}")
    if template.get("prefix"):
        parts.append(f"--source_prefix {shlex.quote(template['prefix'])}")
    if params.get("limit") is not None:
        parts.append(f"--limit {params['limit']}")
    return " \\\n    ".join(parts) + " \\\n    --output_dir TRANSLATIONS"


def _cell(text: str | None, limit: int = 160) -> str:
    """Table-safe text: control characters escaped, pipes escaped, long text cut."""
    if text is None:
        return "*null*"
    out = []
    for ch in text:
        if ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        elif ch == "|":
            out.append("\\|")
        else:
            out.append(ch)
    cell = "".join(out)
    return cell if len(cell) <= limit else cell[: limit - 1] + "…"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
