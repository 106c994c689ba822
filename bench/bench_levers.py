"""Speed levers for training on a CPU, one optimizer step at a time: full fp32 weights, LoRA (rank 16 on every
projection), only the top N blocks trained (topN: fine-tuning's `train.top_layers`), bf16 autocast, bf16
weights. SmolLM2-135M (or any checkpoint folder), a batch of 2 x 512 random tokens, AdamW.

    python bench/bench_levers.py runs/smollm2-135m/base/v1 fp32 lora top8 top12 autocast bf16w [--steps 3]

Prints training tokens/s per lever (the first step, a warm-up, is not timed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from record import command_line, machine  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tokens_per_s(path: str, lever: str, steps: int, batch: int = 2, seq: int = 512) -> float:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if lever == "bf16w" else torch.float32)
    if lever == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS))
    if lever.startswith("top"):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from reward.model import freeze_below_top_layers

        freeze_below_top_layers(model, int(lever[3:]), head="lm_head", knob=lever)
    model.train()
    x = torch.randint(0, model.config.vocab_size, (batch, seq))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever == "autocast"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    start = time.time()
    for _ in range(steps):
        step()
    return batch * seq * steps / (time.time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("levers", nargs="+", help="fp32, lora, top<N> (e.g. top8), autocast, bf16w")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    for lever in args.levers:
        if lever not in ("fp32", "lora", "autocast", "bf16w") and not (lever.startswith("top") and lever[3:].isdigit()):
            parser.error(f"unknown lever {lever!r}: expected fp32, lora, top<N>, autocast or bf16w")
    print(f"{command_line()}\n{machine()}")
    for lever in args.levers:
        print(f"{lever}: {tokens_per_s(args.model, lever, args.steps):.0f} training tokens/s", flush=True)


if __name__ == "__main__":
    main()
