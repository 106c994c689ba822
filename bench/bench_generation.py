"""Generated tokens/s of stages.generation against a per-prompt `model.generate(num_return_sequences=K)` loop.

Both sample the same prompts with the same K, temperature, top-p and max_new_tokens; a token counts when
it is generated up to and including the first stop token (padding after a finished sequence does not).

    python bench/bench_generation.py --model tiny --prompts 8 --k 4 --max-new-tokens 32 --batch-size 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.generation import SamplingConfig, default_stop_token_ids, generate  # noqa: E402

TOPICS = ["the moon", "tax law", "a lost cat", "sourdough bread", "quantum computing", "the French revolution",
          "how to tie a bowline knot", "why the sky is blue"]
ASKS = ["Write a haiku about {}.", "Explain {} to a ten-year-old in a few sentences.",
        "List three surprising facts about {} and say briefly why each one matters to ordinary people.",
        "Tell me about {}."]


def build_prompts(tokenizer, count: int) -> list[list[int]]:
    """Chat-templated user turns of varied length, the shape of rejection-sampling prompts."""
    prompts = []
    for i in range(count):
        message = ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)])
        ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                            tokenize=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return prompts


def load(model_name: str, device: str, dtype: torch.dtype):
    if model_name == "tiny":
        from stages.tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype)
    return model.to(device).eval(), tokenizer


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_engine(model, tokenizer, prompts, cfg: SamplingConfig) -> int:
    results = generate(model, tokenizer, prompts, cfg)
    return sum(c.num_tokens for completions in results for c in completions)


def run_hf_loop(model, tokenizer, prompts, cfg: SamplingConfig, stop_ids: list[int], device: str) -> int:
    torch.manual_seed(cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    tokens = 0
    with torch.inference_mode():
        for prompt in prompts:
            input_ids = torch.tensor([prompt], device=device)
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                                 num_return_sequences=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                 eos_token_id=stop_ids, pad_token_id=pad_id)
            for row in out[:, len(prompt):].tolist():
                ends = [i for i, token in enumerate(row) if token in stop_ids]
                tokens += ends[0] + 1 if ends else len(row)
    return tokens


def timed(fn) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help='a hub id or local path, or "tiny" (random, no download)')
    parser.add_argument("--prompts", type=int, default=16, help="number of prompts")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="engine sequences per forward")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    args = parser.parse_args(argv)

    model, tokenizer = load(args.model, args.device, getattr(torch, args.dtype))
    prompts = build_prompts(tokenizer, args.prompts)
    stop_ids = default_stop_token_ids(tokenizer, model)
    cfg = SamplingConfig(num_samples=args.k, temperature=args.temperature, top_p=args.top_p,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop_token_ids=stop_ids)

    # Warm both paths up (kernels, allocator) on one short prompt before timing.
    warm = SamplingConfig(num_samples=args.k, max_new_tokens=4, batch_size=args.batch_size, stop_token_ids=stop_ids)
    run_engine(model, tokenizer, prompts[:1], warm)
    run_hf_loop(model, tokenizer, prompts[:1], warm, stop_ids, args.device)
    sync(args.device)

    def engine():
        tokens = run_engine(model, tokenizer, prompts, cfg)
        sync(args.device)
        return tokens

    def hf_loop():
        tokens = run_hf_loop(model, tokenizer, prompts, cfg, stop_ids, args.device)
        sync(args.device)
        return tokens

    engine_tokens, engine_s = timed(engine)
    hf_tokens, hf_s = timed(hf_loop)
    engine_tps, hf_tps = engine_tokens / engine_s, hf_tokens / hf_s
    print("| model | device | prompts | K | max new | batch | engine tok/s | HF generate loop tok/s | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.device} | {args.prompts} | {args.k} | {args.max_new_tokens} | {args.batch_size} "
          f"| {engine_tps:.0f} ({engine_tokens} tok) | {hf_tps:.0f} ({hf_tokens} tok) | {engine_tps / hf_tps:.2f}x |")


if __name__ == "__main__":
    main()
