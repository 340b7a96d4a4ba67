"""What every entry point shares: YAML-plus-flags parsing and one-line user errors.

    from common.cli import parse_with_config, run

    def main(argv=None): (args,) = parse_with_config((MyArguments,), argv); ...
    if __name__ == "__main__": run(main, "mytool")

Precedence of values: command line, then the `--config` YAML file, then the
dataclass field defaults (the one home of every default).

A user mistake (a bad flag value, a missing or malformed file, a refused resume)
ends the process with exit code 2 and one line on stderr that names the flag or
file. A traceback means a bug; `--debug` or CONALA_DEBUG=1 shows it for any error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

DEBUG_ENV = "CONALA_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A refusal whose message tells the user what to change."""


# ValueError covers the dataclass `__post_init__` refusals, SchemaError, ResumeMismatch,
# JSONDecodeError, UnicodeDecodeError and pyarrow's ArrowInvalid.
USER_ERRORS = (
    UserError,
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    yaml.YAMLError,
)


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus an error and exits; entry points want the one-line form."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


class _HfParser(HfArgumentParser, Parser):
    pass


def arg(default=MISSING, help: str = "", **metadata):
    """A dataclass field for one flag: its default and its `--help` text (plus, e.g.,
    `choices`). Leaving out the default makes the flag required."""
    return field(default=default, metadata={"help": help, **metadata})


def parse_with_config(classes: tuple, argv: list[str] | None = None, **defaults) -> tuple:
    """Parse `classes` from `--config FILE.yaml` plus flags; refuses unknown YAML keys."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _HfParser(classes)
    parser.set_defaults(**defaults)
    config_path = _config_path(argv)
    if config_path:
        values = load_config(config_path, classes)
        parser.set_defaults(**{k: _typed(parser, config_path, k, v) for k, v in values.items()})
        for action in parser._actions:  # a value from the file satisfies a required flag
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)


def load_config(path: str, classes: tuple) -> dict:
    """Read a YAML config, refusing keys no argument class defines."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config: file not found: {path}")
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: not valid YAML ({_first_line(err)})") from err
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    known = {f.name for cls in classes for f in fields(cls)} - {"config"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {unknown}; see `--help` for the valid names")
    return values


def _typed(parser: argparse.ArgumentParser, path: str, key: str, value):
    """A YAML value checked and converted exactly as the same flag on the command line is:
    YAML's own types (`7.5`, `true`, a mapping) must not slip past the flag's type."""
    action = next(a for a in parser._actions if a.dest == key)
    where = f"--config {path}: {key}"
    if value is None:
        if action.default is None:
            return None
        raise UserError(f"{where}: null is not allowed (leave the key out for the default)")
    many = action.nargs in ("+", "*")
    if isinstance(value, list) and not many:
        raise UserError(f"{where}: expected one value, got a list")
    converted = []
    for item in value if isinstance(value, list) and many else [value]:
        text = json.dumps(item) if isinstance(item, dict | list) else str(item)
        try:
            item = action.type(text) if action.type else text
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            kind = getattr(action.type, "__name__", "value")
            raise UserError(f"{where}: {value!r} is not a valid {kind}") from None
        if action.choices is not None and item not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise UserError(f"{where}: {value!r} is not one of {choices}")
        converted.append(item)
    return converted if many else converted[0]


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def read_json(path: str | Path, flag: str = "", *, kind: type = dict):
    """A JSON file that must hold a `kind` (an object by default), or one line naming it."""
    where = f"{flag} {path}".strip()
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(value, kind):
        expected = "object" if kind is dict else kind.__name__
        raise UserError(f"{where}: expected a JSON {expected}, got {type(value).__name__}")
    return value


def refuse_overlap(flag: str, output: str | Path, inputs: dict[str, list]) -> None:
    """Refuse an output that is, or holds, one of the inputs (`{flag: [paths]}`): writing
    (or replacing, with --overwrite) it would destroy what the run reads."""
    target = Path(output).resolve()
    for input_flag, paths in inputs.items():
        for path in paths:
            if path is None or not Path(path).exists():
                continue  # a hub id, or a file that is not there to lose
            source = Path(path).resolve()
            if source == target or target in source.parents:
                raise UserError(
                    f"{flag} {output} holds the input {input_flag} {path}; writing there "
                    f"would destroy it. Choose another {flag}"
                )


def refuse_existing(flag: str, paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace files or folders that exist, unless --overwrite."""
    if overwrite:
        return
    for path in paths:
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise UserError(f"{flag}: {path} exists; pass --overwrite to replace it")
    parent = paths[0].parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {parent} is a file; give a directory")


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {seed}")


def run(main: Callable[[list[str]], object], prog: str, argv: list[str] | None = None) -> None:
    """Call `main(argv)` and exit: 0 on success, 2 with one line for a user error.

    A dict or list returned by `main` is printed as JSON on stdout (the run summary).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        result = main(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{prog}: error: {_first_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(result, dict | list):
        print(json.dumps(result, indent=2))
    sys.exit(0)


def _first_line(err: BaseException) -> str:
    """The message on one line: some libraries put the useful part over several."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split())
