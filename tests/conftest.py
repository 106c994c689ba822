"""Fixtures shared by several test files."""
from __future__ import annotations

from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_rms(tmp_path_factory) -> Path:
    """A runs_dir with base, sft and both RMs of the tiny recipe, made once per test session; copy it
    before running stages in it."""
    from stages.cli import main

    root = tmp_path_factory.mktemp("tiny-until-reward")
    assert main(["pipeline", "--until", "reward", "--no-eval", "--recipe", str(TINY), "--set",
                 f"runs_dir={root}"]) == 0
    return root
