"""Write deterministic synthetic CoNaLa files for tests, the demo and benchmarks.

    python -m data.fixtures --out DIR [--seed S] [--train_rows N --test_rows N --mined_rows N]

writes `DIR/conala-train.json`, `DIR/conala-test.json` (JSON arrays, indented like
the originals) and `DIR/conala-mined.jsonl` (JSON lines), in CoNaLa's own formats.

Every row comes from one of 25 Python task templates filled from pools of
identifiers and literals, so `rewritten_intent` follows regularly from
`intent` + `snippet`: it names the snippet's identifiers in backticks and its
literals in single quotes, as the real annotations do. A tiny model can learn that
mapping in minutes. The text is generated here, never copied from CoNaLa.

The awkward cases a pipeline must survive are built in: null `rewritten_intent`
(~3%), a few null intents, multi-line snippets of several hundred characters,
accents/CJK/emoji in literals, newlines and `{}` in snippets, and in mined: several
rows per question and exact duplicate (intent, snippet) pairs.

The same seed gives byte-identical files; 600K mined rows take a few seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.cli import Parser, UserError, check_seed, refuse_existing, run

DEFAULT_TRAIN_ROWS = 400
DEFAULT_TEST_ROWS = 100
DEFAULT_MINED_ROWS = 2000
FILE_NAMES = {
    "train": "conala-train.json",
    "test": "conala-test.json",
    "mined": "conala-mined.jsonl",
}
NULL_TARGET_RATE = 0.03
NULL_INTENTS = {"train": 2, "test": 1, "mined": 3}
MINED_DUPLICATE_RATE = 0.05
# Real curated questions mostly have one answer row; mined ones have several.
CURATED_ROWS_PER_QUESTION = (1, 1, 1, 1, 1, 2, 2, 3)
MINED_ANSWERS_PER_QUESTION = (1, 1, 2, 2, 3)
MINED_SNIPPETS_PER_ANSWER = (1, 1, 1, 2, 3)


def _variants(*bases: str) -> tuple[str, ...]:
    """Decorate base names so that most of 600K mined rows are distinct (~15% repeat a pair)."""
    prefixes = ("", "", "", "my_", "new_", "all_", "user_", "raw_", "old_")
    suffixes = ("", "", "", "_a", "_b", "_tmp", *(str(i) for i in range(100)))
    return tuple(
        prefix + base + suffix for prefix in prefixes for base in bases for suffix in suffixes
    )


LISTS = _variants("items", "values", "numbers", "words", "names", "scores", "rows", "lst")
DICTS = _variants("d", "config", "counts", "mapping", "params", "settings", "headers")
STRINGS = _variants("s", "text", "line", "name", "title", "message", "sentence")
RESULTS = _variants("content", "body", "result", "contents")
FOLDERS = _variants("folder", "path", "directory", "root")
FILES = (
    "data.txt",
    "config.json",
    "output.csv",
    "log.txt",
    "notes.md",
    "résumé.txt",
    "报告.txt",
    "/tmp/result.json",
    "C:/Users/me/file.txt",
)
EXTENSIONS = ("txt", "csv", "py", "json", "png")
WORDS = (
    "hello",
    "foo",
    "bar",
    "world",
    "spam",
    "eggs",
    "café",
    "naïve",
    "Müller",
    "über",
    "ñandú",
    "crème brûlée",
    "日本語",
    "你好",
    "こんにちは",
    "🙂",
    "🐍 python",
    "ok 👍",
)
SEPARATORS = (",", ";", " ", "|", "-", ":", ", ", "::")
KEYS = ("name", "id", "age", "count", "value", "price", "clé", "名前")
COLUMNS = ("amount", "total", "score", "montant", "quantity")
DEFAULTS = ("0", "None", "''", "[]", "-1")
PATTERNS = (r"\d+", r"[a-z]+", r"\s+", r"\w+@\w+\.com", r"^#", r"(\d{3})-(\d{4})", r"[A-Z]{2,}")
ORDINALS = ("first", "second", "third", "fourth")
CASES = (
    ("upper", "upper case"),
    ("lower", "lower case"),
    ("title", "title case"),
    ("capitalize", "capitalized form"),
    ("swapcase", "swapped case"),
)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FUNCTIONS = ("count_words", "top_words", "word_freq", "summarize", "group_totals", "load_report")


@dataclass(frozen=True)
class Task:
    """Question titles for one kind of task, and a maker of (snippet, rewritten_intent)."""

    intents: tuple[str, ...]
    make: Callable[[random.Random], tuple[str, str]]
    weight: int = 10


def _sort_by_key(rng: random.Random) -> tuple[str, str]:
    lst, i = rng.choice(LISTS), rng.randrange(4)
    if rng.random() < 0.3:
        return (
            f"sorted({lst}, key=lambda x: x[{i}], reverse=True)",
            f"sort list `{lst}` by the {ORDINALS[i]} element in descending order",
        )
    return f"sorted({lst}, key=lambda x: x[{i}])", f"sort list `{lst}` by the {ORDINALS[i]} element"


def _join(rng: random.Random) -> tuple[str, str]:
    lst, sep = rng.choice(LISTS), rng.choice(SEPARATORS)
    return f"'{sep}'.join({lst})", f"join the strings in list `{lst}` with separator '{sep}'"


def _split(rng: random.Random) -> tuple[str, str]:
    s, sep = rng.choice(STRINGS), rng.choice(SEPARATORS)
    return f"{s}.split('{sep}')", f"split string `{s}` on delimiter '{sep}'"


def _read_file(rng: random.Random) -> tuple[str, str]:
    path, var = rng.choice(FILES), rng.choice(RESULTS)
    return (
        f"with open('{path}', encoding='utf-8') as f:\n    {var} = f.read()",
        f"read the contents of file '{path}' into `{var}`",
    )


def _write_lines(rng: random.Random) -> tuple[str, str]:
    lst, path = rng.choice(LISTS), rng.choice(FILES)
    return (
        f"with open('{path}', 'w') as f:\n    for item in {lst}:\n        f.write(f'{{item}}\\n')",
        f"write each element of list `{lst}` to file '{path}' on its own line",
    )


def _findall(rng: random.Random) -> tuple[str, str]:
    pattern, s = rng.choice(PATTERNS), rng.choice(STRINGS)
    return (
        f"re.findall(r'{pattern}', {s})",
        f"find all matches of regex '{pattern}' in string `{s}`",
    )


def _sub(rng: random.Random) -> tuple[str, str]:
    pattern, s, word = rng.choice(PATTERNS), rng.choice(STRINGS), rng.choice(WORDS)
    return (
        f"re.sub(r'{pattern}', '{word}', {s})",
        f"replace every match of regex '{pattern}' in string `{s}` with '{word}'",
    )


def _dict_get(rng: random.Random) -> tuple[str, str]:
    d, key, default = rng.choice(DICTS), rng.choice(KEYS), rng.choice(DEFAULTS)
    return (
        f"{d}.get('{key}', {default})",
        f"get the value of key '{key}' in dictionary `{d}`, or `{default}` if it is missing",
    )


def _sort_by_value(rng: random.Random) -> tuple[str, str]:
    d = rng.choice(DICTS)
    if rng.random() < 0.5:
        return (
            f"sorted({d}.items(), key=lambda kv: kv[1], reverse=True)",
            f"sort the items of dictionary `{d}` by value in descending order",
        )
    return (
        f"sorted({d}.items(), key=lambda kv: kv[1])",
        f"sort the items of dictionary `{d}` by value",
    )


def _filter_dict(rng: random.Random) -> tuple[str, str]:
    d, n = rng.choice(DICTS), rng.randint(0, 100)
    return (
        f"{{k: v for k, v in {d}.items() if v > {n}}}",
        f"keep only the entries of dictionary `{d}` whose value is greater than {n}",
    )


def _merge(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(DICTS, 2)
    return (
        f"{{**{first}, **{second}}}",
        f"merge dictionaries `{first}` and `{second}` into a new dictionary",
    )


def _format(rng: random.Random) -> tuple[str, str]:
    s, word = rng.choice(STRINGS), rng.choice(WORDS)
    return (
        f"f'{word}: {{{s}}}'",
        f"format the value of `{s}` into a string prefixed with '{word}: '",
    )


def _case(rng: random.Random) -> tuple[str, str]:
    (method, description), s = rng.choice(CASES), rng.choice(STRINGS)
    return f"{s}.{method}()", f"convert string `{s}` to {description}"


def _count(rng: random.Random) -> tuple[str, str]:
    lst, word = rng.choice(LISTS), rng.choice(WORDS)
    return f"{lst}.count('{word}')", f"count the occurrences of '{word}' in list `{lst}`"


def _divisible(rng: random.Random) -> tuple[str, str]:
    lst, n = rng.choice(LISTS), rng.randint(2, 9)
    return (
        f"[x for x in {lst} if x % {n} == 0]",
        f"get the elements of list `{lst}` that are divisible by {n}",
    )


def _dedupe(rng: random.Random) -> tuple[str, str]:
    lst = rng.choice(LISTS)
    if rng.random() < 0.5:
        return f"list(set({lst}))", f"remove duplicates from list `{lst}`"
    return (
        f"list(dict.fromkeys({lst}))",
        f"remove duplicates from list `{lst}` keeping the original order",
    )


def _json_dump(rng: random.Random) -> tuple[str, str]:
    d, path = rng.choice(DICTS), rng.choice(FILES)
    return (
        f"with open('{path}', 'w', encoding='utf-8') as f:\n"
        f"    json.dump({d}, f, ensure_ascii=False)",
        f"write dictionary `{d}` as JSON to file '{path}'",
    )


def _json_loads(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        s = rng.choice(STRINGS)
        return f"json.loads({s})", f"parse the JSON string `{s}` into a Python object"
    key, n, word = rng.choice(KEYS), rng.randint(0, 999), rng.choice(WORDS)
    document = f'{{"{key}": {n}, "note": "{word}"}}'
    return f"json.loads('{document}')", f"parse the JSON string '{document}' into a dictionary"


def _strptime(rng: random.Random) -> tuple[str, str]:
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    date, fmt = rng.choice(
        (
            (f"{year}-{month:02d}-{day:02d}", "%Y-%m-%d"),
            (f"{day:02d}/{month:02d}/{year}", "%d/%m/%Y"),
            (f"{MONTHS[month - 1]} {day:02d} {year}", "%b %d %Y"),
            (
                f"{year}-{month:02d}-{day:02d} {day % 24:02d}:{month * 4:02d}:00",
                "%Y-%m-%d %H:%M:%S",
            ),
        )
    )
    return (
        f"datetime.strptime('{date}', '{fmt}')",
        f"parse date string '{date}' using format '{fmt}'",
    )


def _list_dir(rng: random.Random) -> tuple[str, str]:
    folder = rng.choice(FOLDERS)
    if rng.random() < 0.5:
        return f"os.listdir({folder})", f"list the files in directory `{folder}`"
    ext = rng.choice(EXTENSIONS)
    return (
        f"glob.glob(os.path.join({folder}, '*.{ext}'))",
        f"list the '.{ext}' files in directory `{folder}`",
    )


def _zip_dict(rng: random.Random) -> tuple[str, str]:
    keys, values = rng.sample(LISTS, 2)
    return (
        f"dict(zip({keys}, {values}))",
        f"create a dictionary with keys from list `{keys}` and values from list `{values}`",
    )


def _argmax(rng: random.Random) -> tuple[str, str]:
    d, (function, size) = rng.choice(DICTS), rng.choice((("max", "largest"), ("min", "smallest")))
    return (
        f"{function}({d}, key={d}.get)",
        f"get the key with the {size} value in dictionary `{d}`",
    )


def _print(rng: random.Random) -> tuple[str, str]:
    word, s = rng.choice(WORDS), rng.choice(STRINGS)
    return f"print('{word}', {s})", f"print the string '{word}' followed by the value of `{s}`"


def _word_count_function(rng: random.Random) -> tuple[str, str]:
    name, n = rng.choice(FUNCTIONS), rng.randint(3, 20)
    sep, path = rng.choice(SEPARATORS), rng.choice(FILES)
    snippet = (
        f"def {name}(path, n={n}):\n"
        "    counts = {}\n"
        "    with open(path, encoding='utf-8') as f:\n"
        "        for line in f:\n"
        f"            for word in line.split('{sep}'):\n"
        "                word = word.strip().lower()\n"
        "                if word:\n"
        "                    counts[word] = counts.get(word, 0) + 1\n"
        "    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)\n"
        "    return ranked[:n]\n"
        "\n"
        "\n"
        f"print({name}('{path}'))"
    )
    return snippet, (
        f"define function `{name}` that counts the words separated by '{sep}' in a file "
        f"and returns the {n} most common, then call it on file '{path}'"
    )


def _csv_totals_function(rng: random.Random) -> tuple[str, str]:
    name, var, path = rng.choice(FUNCTIONS), rng.choice(RESULTS), rng.choice(FILES)
    key, column = rng.choice(KEYS), rng.choice(COLUMNS)
    snippet = (
        "import csv\n"
        "from collections import defaultdict\n"
        "\n"
        "\n"
        f"def {name}(path):\n"
        "    totals = defaultdict(float)\n"
        "    with open(path, newline='', encoding='utf-8') as f:\n"
        "        for row in csv.DictReader(f):\n"
        f"            totals[row['{key}']] += float(row['{column}'])\n"
        "    for name, total in sorted(totals.items()):\n"
        "        print(f'{name}: {total:.2f}')\n"
        "    return dict(totals)\n"
        "\n"
        "\n"
        f"{var} = {name}('{path}')"
    )
    return snippet, (
        f"define function `{name}` that sums column '{column}' of a CSV file grouped by "
        f"column '{key}', and store the totals for file '{path}' in `{var}`"
    )


TASKS = (
    Task(
        (
            "How do I sort a list by a key?",
            "Sort a list of tuples by the second item",
            "python sort list of lists by element",
        ),
        _sort_by_key,
    ),
    Task(
        (
            "How to join a list of strings?",
            "Python: concatenate list items into a string",
            "convert list to string with separator",
        ),
        _join,
    ),
    Task(
        (
            "How to split a string by a delimiter?",
            "python split string",
            "Split a string into a list on a character",
        ),
        _split,
    ),
    Task(
        (
            "How do I read a whole file into a string?",
            "Python read file contents",
            "open a text file and read it",
        ),
        _read_file,
    ),
    Task(
        (
            "Writing a list to a file with Python",
            "How to write each list item on a new line?",
            "save list to text file",
        ),
        _write_lines,
    ),
    Task(
        (
            "How to find all regex matches in a string?",
            "python regex get all occurrences",
            "extract all matching substrings with re",
        ),
        _findall,
    ),
    Task(
        (
            "Replace text using a regular expression",
            "python re.sub replace pattern",
            "How to substitute all matches of a regex?",
        ),
        _sub,
    ),
    Task(
        (
            "Get a dictionary value with a default",
            "How to avoid KeyError in a dict?",
            "python dict get key if exists",
        ),
        _dict_get,
    ),
    Task(
        (
            "How do I sort a dictionary by value?",
            "sort dict by values descending",
            "Python: order dictionary items by value",
        ),
        _sort_by_value,
    ),
    Task(
        (
            "Filter a dictionary by value",
            "dict comprehension with condition",
            "remove dictionary entries below a threshold",
        ),
        _filter_dict,
    ),
    Task(
        (
            "How do I merge two dictionaries in a single expression?",
            "combine two dicts python",
            "merge dicts",
        ),
        _merge,
    ),
    Task(
        (
            "How to put a variable into a string?",
            "python string formatting with variables",
            "f-string example",
        ),
        _format,
    ),
    Task(
        (
            "How to change the case of a string?",
            "convert string to uppercase python",
            "capitalize a string",
        ),
        _case,
    ),
    Task(
        (
            "Count occurrences of an item in a list",
            "how many times does a value appear in a list",
            "python count element frequency",
        ),
        _count,
    ),
    Task(
        (
            "List comprehension with a condition",
            "filter a list of numbers",
            "get multiples from a list",
        ),
        _divisible,
    ),
    Task(
        (
            "Remove duplicates from a list while preserving order",
            "python unique list",
            "How do I remove duplicate items?",
        ),
        _dedupe,
    ),
    Task(
        (
            "How to write a dict to a JSON file?",
            "save dictionary as json",
            "python json dump unicode",
        ),
        _json_dump,
    ),
    Task(
        (
            "Parse a JSON string",
            "convert json string to dict python",
            "How to load JSON from a string?",
        ),
        _json_loads,
    ),
    Task(
        (
            "How to convert a string to a datetime?",
            "parse date string python",
            "string to datetime object",
        ),
        _strptime,
    ),
    Task(
        (
            "How do I list all files of a directory?",
            "get files in folder python",
            "list directory contents",
        ),
        _list_dir,
    ),
    Task(
        (
            "Make a dictionary from two lists",
            "convert two lists into a dict",
            "python zip keys and values",
        ),
        _zip_dict,
    ),
    Task(
        (
            "Get the key with the maximum value in a dictionary",
            "dict key of max value",
            "python find max in dict",
        ),
        _argmax,
    ),
    Task(
        (
            "How to print unicode characters?",
            "print a string in python 3",
            "print emoji",
        ),
        _print,
    ),
    Task(
        (
            "How do I count word frequencies in a file?",
            "Python word count from text file",
            "most common words in a file",
        ),
        _word_count_function,
        weight=1,
    ),
    Task(
        (
            "Group by and sum with the csv module",
            "How to total a CSV column per category?",
            "sum values in csv by key python",
        ),
        _csv_totals_function,
        weight=1,
    ),
)
# One entry per unit of weight, so a weighted draw is a plain rng.choice.
_DRAW = tuple(task for task in TASKS for _ in range(task.weight))


def write_fixtures(
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_rows: int = DEFAULT_TRAIN_ROWS,
    test_rows: int = DEFAULT_TEST_ROWS,
    mined_rows: int = DEFAULT_MINED_ROWS,
) -> dict[str, Path]:
    """Write the three files into `out_dir`; return their paths keyed train/test/mined."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: out / name for split, name in FILE_NAMES.items()}
    for split, rows in (("train", train_rows), ("test", test_rows)):
        records = _curated_rows(_rng(seed, split), rows, NULL_INTENTS[split])
        paths[split].write_text(json.dumps(records, indent=2), encoding="utf-8")
    with paths["mined"].open("w", encoding="utf-8") as handle:
        rows = _mined_rows(_rng(seed, "mined"), mined_rows, NULL_INTENTS["mined"])
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return paths


def _rng(seed: int, split: str) -> random.Random:
    # One stream per file, so changing one file's row count leaves the others unchanged.
    return random.Random(f"{seed}:{split}")


def _curated_rows(rng: random.Random, count: int, null_intents: int) -> list[dict]:
    rows: list[dict] = []
    question_id = rng.randrange(1_000_000, 2_000_000)
    while len(rows) < count:
        question_id += rng.randint(1, 50_000)
        task = rng.choice(_DRAW)
        intent = rng.choice(task.intents)
        for _ in range(rng.choice(CURATED_ROWS_PER_QUESTION)):
            snippet, rewritten = task.make(rng)
            rows.append(
                {
                    "intent": intent,
                    "rewritten_intent": rewritten,
                    "snippet": snippet,
                    "question_id": question_id,
                }
            )
    del rows[count:]
    null_targets = min(count, max(1, round(count * NULL_TARGET_RATE)))
    chosen = rng.sample(range(count), min(count, null_targets + null_intents))
    for index in chosen[:null_targets]:
        rows[index]["rewritten_intent"] = None
    for index in chosen[null_targets:]:
        rows[index]["intent"] = None
    return rows


def _mined_rows(rng: random.Random, count: int, null_intents: int) -> Iterator[dict]:
    """Yield `count` rows grouped as questions -> answer posts -> snippets (`id`'s k)."""
    blank = set(rng.sample(range(count), min(count, null_intents)))
    index = 0
    question_id = rng.randrange(1_000_000, 2_000_000)
    while index < count:
        # Strictly increasing question ids keep every `id` unique.
        question_id += rng.randint(1, 60)
        task = rng.choice(_DRAW)
        intent = rng.choice(task.intents)
        post_id = question_id
        for _ in range(rng.choice(MINED_ANSWERS_PER_QUESTION)):
            post_id += rng.randint(1, 5_000)
            snippet = ""
            for k in range(rng.choice(MINED_SNIPPETS_PER_ANSWER)):
                if not snippet or rng.random() >= MINED_DUPLICATE_RATE:
                    snippet = task.make(rng)[0]
                yield {
                    "parent_answer_post_id": post_id,
                    "prob": round(rng.uniform(0.01, 0.99), 6),
                    "snippet": snippet,
                    "intent": None if index in blank else intent,
                    "id": f"{question_id}_{post_id}_{k}",
                    "question_id": question_id,
                }
                index += 1
                if index == count:
                    return


MAX_ROWS = 10_000_000  # rows are built in memory; 600K (CoNaLa's mined size) takes ~10 s


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m data.fixtures", description="Write synthetic CoNaLa files.")
    parser.add_argument("--out", required=True, help="Directory to write the three files into.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; same seed, same bytes.")
    parser.add_argument(
        "--train_rows", type=int, default=DEFAULT_TRAIN_ROWS, help="Rows in conala-train.json."
    )
    parser.add_argument(
        "--test_rows", type=int, default=DEFAULT_TEST_ROWS, help="Rows in conala-test.json."
    )
    parser.add_argument(
        "--mined_rows", type=int, default=DEFAULT_MINED_ROWS, help="Rows in conala-mined.jsonl."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace existing files.")
    args = parser.parse_args(argv)
    for name in ("train_rows", "test_rows", "mined_rows"):
        if not 0 <= getattr(args, name) <= MAX_ROWS:
            raise UserError(f"--{name} must be in [0, {MAX_ROWS:,}], got {getattr(args, name)}")
    check_seed(args.seed)
    out = Path(args.out)
    refuse_existing("--out", [out / name for name in FILE_NAMES.values()], args.overwrite)
    paths = write_fixtures(
        out,
        seed=args.seed,
        train_rows=args.train_rows,
        test_rows=args.test_rows,
        mined_rows=args.mined_rows,
    )
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    run(main, "data.fixtures")
