"""Where this process runs: its rank among launched processes, its device, progress bars only the main
process draws, building models whole while a DeepSpeed ZeRO-3 engine is live, and where a stage's time
goes (``phase``).

The lowest layer, so the reward library, the evaluation code and the pipeline all ask the same questions
in the same way.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

# torch, tqdm and transformers are imported where they are used: the CLI reads recipes and registries
# through this module's importers without paying seconds for them.


def process_info() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return process_info()[0] == 0


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def default_device() -> str:
    """The device models are placed on outside the trainer: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar (done, rate, ETA) on an interactive terminal of the main process; otherwise a bar
    that draws nothing, so logs and the other processes' output stay clean."""
    from tqdm.auto import tqdm

    quiet = not is_main_process() or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def whole_model_init():
    """Build models whole in this process even while a DeepSpeed ZeRO-3 engine is live.

    Once accelerate has prepared a ZeRO-3 engine, transformers sees ZeRO-3 as enabled and builds every
    later model under ``deepspeed.zero.Init``, which partitions it with collectives that all processes
    must join. Models loaded outside the trained engine (the RM built from a chat model, a saved RM
    scored by the main process alone, a policy to sample from) must be whole: this suspends that
    detection while they load. The trained model is sharded when the trainer prepares it (the
    accelerate configs set ``zero3_init_flag: false``).
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # transformers without the DeepSpeed integration
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    if saved is None:
        yield
        return
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


# ---------------------------------------------------------------- where the time goes
_PHASE_STACK: list[list] = []          # [name, start of its current exclusive stretch]
_PHASE_TIMES: dict[str, float] = {}    # "evaluation/sampling" -> seconds spent there and nowhere deeper


@contextlib.contextmanager
def phase(name: str):
    """Count the time spent inside as ``name`` (training, sampling, scoring, evaluation, loading, saving).

    Phases nest: time inside a phase opened within another is counted under both names joined by "/"
    ("evaluation/sampling") and not again under the outer one, so the times of a stage add up to at most
    its wall time. ``phase_times`` reads them; a stage run resets them when it starts (stages/common.py).
    """
    if _PHASE_STACK and _PHASE_STACK[-1][0] == name:  # evaluation inside evaluation is one phase
        yield
        return
    now = time.perf_counter()
    if _PHASE_STACK:
        _add_exclusive(now)
    _PHASE_STACK.append([name, now])
    try:
        yield
    finally:
        now = time.perf_counter()
        _add_exclusive(now)
        _PHASE_STACK.pop()
        if _PHASE_STACK:
            _PHASE_STACK[-1][1] = now


def _add_exclusive(now: float) -> None:
    key = "/".join(entry[0] for entry in _PHASE_STACK)
    _PHASE_TIMES[key] = _PHASE_TIMES.get(key, 0.0) + now - _PHASE_STACK[-1][1]
    _PHASE_STACK[-1][1] = now


def phase_times(reset: bool = False) -> dict[str, float]:
    """Seconds per phase since the last reset, rounded to 0.01 s, largest first."""
    times = {k: round(v, 2) for k, v in sorted(_PHASE_TIMES.items(), key=lambda kv: -kv[1])}
    if reset:
        _PHASE_TIMES.clear()
    return times
