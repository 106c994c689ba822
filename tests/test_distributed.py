"""The distributed path on CPU: 2 processes (gloo) under torchrun (DDP) and accelerate + DeepSpeed ZeRO-2.

Each must train the same model as one process does: the trainer splits every optimizer step's
examples over the processes and averages the loss over the whole step, so the weights agree up to
floating-point reduction order.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.cli import main
from stages.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny.yaml")
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def launch(command: list[str], runs: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, "-m", "stages", "stage", "sft", "--recipe", TINY, "--set", f"runs_dir={runs}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    runs = tmp_path_factory.mktemp("single")
    assert main(["stage", "base", "--recipe", TINY, "--set", f"runs_dir={runs}"]) == 0
    assert main(["stage", "sft", "--recipe", TINY, "--set", f"runs_dir={runs}"]) == 0
    return runs, load_file(str(Registry(runs / "tiny").resolve("sft@latest").path / "model.safetensors"))


def copy_base(single_runs: Path, runs: Path) -> None:
    shutil.copytree(single_runs / "tiny" / "base", runs / "tiny" / "base")


def assert_same_training(runs: Path, single_runs: Path, reference: dict[str, torch.Tensor]) -> None:
    """Same losses step by step, and weights that differ by a small share of what training changed.

    Adam amplifies reduction-order noise in tiny gradients to a sizeable share of lr, so weights are
    compared relative to the update itself (about 1% here): a missing gradient all-reduce, a wrong
    data shard or a doubled step moves them by tens of percent.
    """
    version = Registry(runs / "tiny").resolve("sft@latest")
    assert version.manifest["parents"][0]["id"] == "base/v1"
    weights = load_file(str(version.path / "model.safetensors"))
    base = load_file(str(Registry(single_runs / "tiny").resolve("base@v1").path / "model.safetensors"))
    drift = sum(float(((weights[n] - reference[n]) ** 2).sum()) for n in reference) ** 0.5
    update = sum(float(((reference[n] - base[n]) ** 2).sum()) for n in reference) ** 0.5
    assert drift < 0.05 * update, f"weights differ by {drift / update:.1%} of the training update"
    single = Registry(single_runs / "tiny").resolve("sft@latest").manifest["metrics"]["history"]
    losses = [h["train_loss"] for h in version.manifest["metrics"]["history"][1:]]
    assert losses == pytest.approx([h["train_loss"] for h in single[1:]], abs=2e-3)


def test_torchrun_two_processes_match_one(single, tmp_path):
    runs = tmp_path / "ddp"
    copy_base(single[0], runs)
    launch([str(BIN / "torchrun"), "--nproc_per_node", "2"], runs)
    assert_same_training(runs, single[0], single[1])


@pytest.mark.skipif(not shutil.which("accelerate", path=str(BIN)), reason="accelerate CLI not installed")
def test_accelerate_deepspeed_zero2_on_cpu_matches_one(single, tmp_path):
    pytest.importorskip("deepspeed")
    runs = tmp_path / "zero2"
    copy_base(single[0], runs)
    launch([str(BIN / "accelerate"), "launch", "--config_file",
            str(ROOT / "recipes" / "accelerate" / "cpu-zero2.yaml")], runs)
    assert_same_training(runs, single[0], single[1])


@pytest.mark.skipif(not shutil.which("accelerate", path=str(BIN)), reason="accelerate CLI not installed")
def test_accelerate_deepspeed_zero3_pipeline_on_cpu(single, tmp_path):
    """ZeRO-3 shards the parameters: SFT (with its oracle evaluation), both reward models and the
    rejection-sampling rounds in one process per rank, as `accelerate launch ... -m stages pipeline` runs
    them. Models loaded beside the live engine (to score, sample or evaluate) must load whole, or the main
    process waits for collectives the others never join; every saved model must load whole too."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForSequenceClassification

    runs = tmp_path / "zero3"
    copy_base(single[0], runs)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "accelerate"), "launch", "--config_file",
                           str(ROOT / "recipes" / "accelerate" / "cpu-zero3.yaml"), "-m", "stages", "pipeline",
                           "--until", "rejection_sampling", "--recipe", TINY, "--set", f"runs_dir={runs}",
                           "--set", "sft.oracle_eval=8", "--set", "rejection_sampling.train.micro_batch_size=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    registry = Registry(runs / "tiny")
    for name in ("rm-helpful", "rm-safety"):
        version = registry.resolve(f"{name}@latest")
        model = AutoModelForSequenceClassification.from_pretrained(version.path)
        assert all(torch.isfinite(p).all() and p.numel() for p in model.parameters())
        assert version.manifest["metrics"]["steps"] > 0
    assert registry.resolve("rs@latest").id == "rs/v2"
    assert "oracle_helpful_accuracy" in registry.resolve("sft@latest").manifest["metrics"]
