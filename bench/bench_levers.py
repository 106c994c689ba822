"""Speed levers for training on a CPU, one optimizer step at a time: full fp32 weights, LoRA (rank 16 on every
projection), only the top N blocks trained (topN: fine-tuning's `train.top_layers`), bf16 autocast, bf16
weights. SmolLM2-135M (or any checkpoint folder), a batch of 2 x 512 random tokens, AdamW. Two levers train on
2 real packed 512-token SFT sequences of built-in demonstrations (answer-only loss) through the SFT loss
(stages.trainer.causal_lm_loss): sft (as shipped: the output head only where a next token is trained) and
sft-allhead (the same batch with the head on every position).

    python bench/bench_levers.py runs/smollm2-135m/base/v1 fp32 lora top8 top12 autocast bf16w sft sft-allhead [--steps 3]

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
    if lever.startswith("sft"):
        sft_batch, n_tokens = real_sft_batch(path, batch, seq)
        target = model if lever == "sft" else HeadOnEveryPosition(model)

    def step():
        if lever.startswith("sft"):
            from stages.trainer import causal_lm_loss

            loss = causal_lm_loss(target, sft_batch)[0]
            loss.backward()
            opt.step()
            opt.zero_grad()
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever == "autocast"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    start = time.time()
    for _ in range(steps):
        step()
    return (n_tokens if lever.startswith("sft") else batch * seq) * steps / (time.time() - start)


class HeadOnEveryPosition(torch.nn.Module):
    """The model behind a forward without ``logits_to_keep``: the SFT loss then runs the head everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def real_sft_batch(path: str, batch: int, seq: int) -> tuple[dict, int]:
    """The first ``batch`` packed ``seq``-token sequences of 320 built-in SFT demonstrations (answer-only labels),
    and their real (unpadded) token count."""
    from transformers import AutoTokenizer

    from data.builtin import dataset
    from data.packing import collate, pack_examples
    from data.templates import encode_conversations

    tokenizer = AutoTokenizer.from_pretrained(path)
    examples, _ = encode_conversations(tokenizer, dataset.build("train", 320, 0), max_length=seq)
    packed = pack_examples([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples], seq,
                           shuffle_seed=0)
    return collate(packed[:batch], tokenizer.pad_token_id), sum(len(p["input_ids"]) for p in packed[:batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("levers", nargs="+", help="fp32, lora, top<N> (e.g. top8), autocast, bf16w")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    for lever in args.levers:
        known = lever in ("fp32", "lora", "autocast", "bf16w", "sft", "sft-allhead")
        if not known and not (lever.startswith("top") and lever[3:].isdigit()):
            parser.error(f"unknown lever {lever!r}: expected fp32, lora, top<N>, autocast, bf16w, sft or sft-allhead")
    print(f"{command_line()}\n{machine()}")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for lever in args.levers:
        print(f"{lever}: {tokens_per_s(args.model, lever, args.steps):.0f} training tokens/s", flush=True)


if __name__ == "__main__":
    main()
