"""Inference speed per weight dtype on this machine: sampling through stages.generation (16 prompts x 4 answers
of <= 64 tokens at batch 32) and plain forwards of 8 x 160 tokens (the shape of reward scoring).

    python bench/bench_dtype.py runs/smollm2-135m/base/v1 float32 bfloat16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_generation import build_prompts, run_engine  # noqa: E402
from record import command_line, machine  # noqa: E402

from stages.generation import SamplingConfig, default_stop_token_ids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a checkpoint folder")
    parser.add_argument("dtypes", nargs="+", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"{command_line()}\n{machine()}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = build_prompts(tokenizer, 16)
    for dtype in args.dtypes:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, dtype)).eval()
        stop = default_stop_token_ids(tokenizer, model)
        warm = SamplingConfig(num_samples=4, max_new_tokens=4, batch_size=32, stop_token_ids=stop)
        run_engine(model, tokenizer, prompts[:2], warm)
        cfg = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=64, batch_size=32, stop_token_ids=stop)
        start = time.perf_counter()
        tokens = run_engine(model, tokenizer, prompts, cfg)
        sampling = time.perf_counter() - start
        x = torch.randint(0, 1000, (8, 160))
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(8):
                model(input_ids=x)
        forward = time.perf_counter() - start
        print(f"{dtype}: sampling {tokens / sampling:.0f} generated tokens/s ({tokens} in {sampling:.1f} s); "
              f"forward {64 * 160 / forward:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
