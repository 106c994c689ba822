"""What a benchmark records about where and how it ran (shared by the bench/ scripts)."""
from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path


def machine() -> str:
    """CPU model and core count (plus the GPU, if there is one), and torch, for the benchmark record."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        out += f", GPU {torch.cuda.get_device_name(0)}"
    return out


def command_line() -> str:
    """The command as typed (`python bench/<script> ...`), with the working directory's prefix removed."""
    cwd = os.getcwd().rstrip("/") + "/"
    script = "bench/" + Path(sys.argv[0]).name
    return f"python {script} " + shlex.join(a.replace(cwd, "") for a in sys.argv[1:])
