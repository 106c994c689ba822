"""The import contracts of pyproject.toml ([tool.importlinter]): libraries never import the pipeline, stage
modules never import each other. Run here so `make test` fails when one breaks."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]', or make install)")
    result = subprocess.run([lint, str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_imports_a_stage_module():
    """Stages meet only at the registry: shared code lives in a kit, never in a stage module (the CLI loads
    stage modules by name from the catalogue)."""
    import grimp

    from stages import catalogue

    graph = grimp.build_graph("stages", "reward", "eval", "data")
    for entry in catalogue.STAGES:
        importers = graph.find_modules_that_directly_import(entry.module)
        assert not importers, (f"{sorted(importers)} import the stage module {entry.module}; move what they share "
                               f"into a kit (stages/finetune.py, stages/rollouts.py) or a library")
