"""What every entry point shares: YAML-plus-flags parsing and one-line user errors.

    from common.cli import parse_with_config, run

    def main(argv=None): (args,) = parse_with_config((MyArguments,), argv); ...
    if __name__ == "__main__": run(main, "mytool")

Precedence of values: command line, then the `--config` YAML file, then the
dataclass field defaults (the one home of every default).

A user mistake (a bad flag value, a missing or malformed file, a refused resume)
ends the process with exit code 2 and one line on stderr that names the flag or
file; so does any operating-system error (a name too long, a symlink loop, a full
disk), naming the path. A traceback means a bug; `--debug` or CONALA_DEBUG=1 shows
it for any error. Ctrl-C at any moment, the slow imports included, is one line
`PROG: interrupted` and exit code 130: an entry point imports this module before
anything heavy, and this module imports nothing heavy.
"""

from __future__ import annotations

# ruff: noqa: E402 (the Ctrl-C guard below must come before the slower imports)
import _signal  # the C module: `signal` itself imports enum (~30 ms)
import os
import sys

EXIT_INTERRUPTED = 130
ENTRY_PACKAGES = ("data", "serve", "train")


def _interrupted_while_importing(signum, frame):
    # Nothing has been written yet, so there is nothing to clean up: exit at once.
    print(f"{sys.modules['__main__'].__spec__.name}: interrupted", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


def _guard_imports() -> None:
    """Until `run` starts, Ctrl-C in `python -m <entry point>` is one line, not the
    traceback of whichever import it lands in (torch and transformers take seconds)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    if name.split(".")[0] in ENTRY_PACKAGES and _signal.getsignal(_signal.SIGINT) is (
        _signal.default_int_handler
    ):
        _signal.signal(_signal.SIGINT, _interrupted_while_importing)


_guard_imports()  # argparse, dataclasses and yaml alone take ~0.1 s

import argparse
import functools
import json
import logging
import re
import shutil
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from pathlib import Path

import yaml

DEBUG_ENV = "CONALA_DEBUG"
EXIT_USER_ERROR = 2

logger = logging.getLogger("common.cli")


class UserError(Exception):
    """A refusal whose message tells the user what to change."""


# ValueError covers the dataclass `__post_init__` refusals, SchemaError, ResumeMismatch,
# JSONDecodeError, UnicodeDecodeError and pyarrow's ArrowInvalid. OSError is every
# refusal of the operating system (missing, too long, looping, unwritable, full), all
# of them about a path the user gave or a disk the user chose.
USER_ERRORS = (UserError, ValueError, OSError, yaml.YAMLError)
# Python 3.11's Path.resolve() reports a symlink loop as this RuntimeError (3.13: OSError).
SYMLINK_LOOP = "Symlink loop from "


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus an error and exits; entry points want the one-line form."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


@functools.cache
def _hf_parser_class() -> type:
    # transformers imports torch (seconds): only the entry points that parse with it pay.
    from transformers import HfArgumentParser

    return type("_HfParser", (HfArgumentParser, Parser), {})


def arg(default=MISSING, help: str = "", **metadata):
    """A dataclass field for one flag: its default and its `--help` text (plus, e.g.,
    `choices`). Leaving out the default makes the flag required."""
    return field(default=default, metadata={"help": help, **metadata})


def parse_with_config(classes: tuple, argv: list[str] | None = None, **defaults) -> tuple:
    """Parse `classes` from `--config FILE.yaml` plus flags; refuses unknown YAML keys."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _hf_parser_class()(classes)
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
    """The one `--config` file; given twice, which one wins would be a guess: refused."""
    paths = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    if len(paths) > 1:
        raise UserError(f"--config given {len(paths)} times ({', '.join(paths)}); give one file")
    return paths[0] if paths else None


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
    """Refuse an output that is, holds, or lies inside one of the inputs (`{flag: [paths]}`):
    writing (or replacing, with --overwrite) it would destroy or change what the run reads."""
    target = real_path(output)
    for input_flag, paths in inputs.items():
        for path in paths:
            if path is None or not os.path.lexists(path):
                continue  # a hub id, or a file that is not there to lose
            source = real_path(path)
            if source == target or target in source.parents:
                raise UserError(
                    f"{flag} {output} holds the input {input_flag} {path}; writing there "
                    f"would destroy it. Choose another {flag}"
                )
            if source in target.parents:
                raise UserError(
                    f"{flag} {output} is inside the input {input_flag} {path}; writing there "
                    f"would change it. Choose another {flag}"
                )


def real_path(path: str | Path) -> Path:
    """`path` with every symlink followed: an output given as a link is written where the
    link points, and the link stays. (Path.resolve raises RuntimeError on a symlink loop;
    realpath leaves the loop for the first open, whose ELOOP is one line.)"""
    return Path(os.path.realpath(path))


def staging_dir(output: Path, kind: str) -> Path:
    """A hidden working folder beside `output` (one filesystem: the final rename is atomic),
    named for this host and process so that a later run can tell whether its owner lives."""
    return output.with_name(f".{output.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def remove_dead_leftovers(output: Path, kinds: tuple[str, ...]) -> None:
    """Delete the `staging_dir(output, kind)` folders of processes killed on this host (kill -9
    skips their cleanup), saying so; a live process's, or another host's, are left alone.
    An `old` folder (the output being replaced) is kept while it is the only copy."""
    name = re.compile(
        rf"\.{re.escape(output.name)}\.(?P<kind>{'|'.join(kinds)})-(?:(?P<host>.+)-)?(?P<pid>\d+)"
    )
    for path in output.parent.iterdir() if output.parent.is_dir() else []:
        match = name.fullmatch(path.name)
        if match is None or match["host"] not in (None, socket.gethostname()):
            continue
        if pid_alive(int(match["pid"])) or (match["kind"] == "old" and not output.exists()):
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, left by process %s, which no longer runs", path, match["pid"])


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a killed writer's leftovers may go)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


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
    if signal.getsignal(signal.SIGINT) is _interrupted_while_importing:
        # From here a Ctrl-C unwinds as KeyboardInterrupt, so `finally` blocks clean up.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = _redeliver_lost_interrupt
    try:
        result = main(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{prog}: error: {_first_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except RuntimeError as err:
        if debug or not str(err).startswith(SYMLINK_LOOP):
            raise
        print(f"{prog}: error: {_first_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if isinstance(result, dict | list):
        print(json.dumps(result, indent=2))
    sys.exit(0)


def _redeliver_lost_interrupt(unraisable) -> None:
    """A Ctrl-C that lands in a weakref callback or finalizer is printed and dropped by
    Python, and the run goes on; send it again a moment later, outside the callback."""
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()


def _first_line(err: BaseException) -> str:
    """The message on one line: some libraries put the useful part over several."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        # The errno form ("[Errno 36] File name too long: '...'") made readable: the path,
        # shortened when a long name is the problem, then what the system said.
        paths = [_short(p) for p in (err.filename, err.filename2) if p is not None]
        text = f"{' -> '.join(paths)}: {err.strerror}"
    return " ".join(text.split())


def _short(path, limit: int = 160) -> str:
    text = os.fsdecode(path) if isinstance(path, bytes | os.PathLike) else str(path)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}…{text[-limit // 2 :]} ({len(text)} characters)"
