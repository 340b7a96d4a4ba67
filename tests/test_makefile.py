"""Make variables reach the commands as data: `;` or `$(...)` in a value is never run."""

from __future__ import annotations

import pytest
from conftest import REPO, run

# Each target with the variables it passes on; every value carries both injections.
TARGETS = {
    "merge": ("ADAPTER", "OUT", "BASE"),
    "translate-mined": ("MODEL", "OUT", "INPUT"),
    "dataset": ("TRANSLATIONS", "OUT", "CURATED_TRAIN", "CURATED_TEST"),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_shell_text_in_variables_is_never_run(target, tmp_path):
    values = {
        name: f"{tmp_path}/nope; touch {tmp_path}/semicolon-{name} $(touch {tmp_path}/subst-{name})"
        for name in TARGETS[target]
    }
    # -o setup: the venv exists; the stage refuses the missing paths and exits 2.
    proc = run(
        ["make", "--no-print-directory", "-C", REPO, "-o", "setup", target,
         *(f"{name}={value}" for name, value in values.items())],
        check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "nope" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("semicolon-*")) and not list(tmp_path.glob("subst-*"))
