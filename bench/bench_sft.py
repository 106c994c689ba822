"""SFT training throughput: chatalign's trainer against TRL's SFTTrainer on the same model, data and machine.

Both train on the same built-in demonstrations, packed into sequences of --seq-len tokens with the
loss on answer tokens only, with the same batch, optimizer settings and number of steps. Reported
tokens/s counts real (non-padding) tokens that went through forward and backward, divided by the
wall time of the training loop alone (data preparation excluded for both).

    python bench/bench_sft.py --model runs/smollm2-135m/base/v1 --steps 6
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch


def load(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), AutoTokenizer.from_pretrained(model_path)


def run_chatalign(args, conversations) -> dict:
    from data.packing import collate
    from stages.engine import TrainSettings
    from stages.finetune import prepare_examples
    from stages.recipe import FineTuneSection, OptimSection
    from stages.trainer import Trainer, step_examples

    model, tok = load(args.model)
    section = FineTuneSection(batch_size=args.batch, micro_batch_size=args.batch, seq_len=args.seq_len, packing=True,
                              max_steps=args.steps, epochs=100, precision=args.precision, train_on="all_assistant",
                              optim=OptimSection(lr=2e-5), checkpoint_every=10**9, eval_every=10**9)
    examples, _ = prepare_examples(conversations, tok, section, "model", seed=0)
    settings = TrainSettings.from_section(section, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(model, examples, [], lambda b: collate(b, tok.pad_token_id), settings, Path(workdir))
        real_tokens = sum(len(examples[i]["input_ids"]) for step in range(args.steps)
                          for i in step_examples(step, len(examples), trainer.steps_per_epoch, args.batch, 0))
        start = time.perf_counter()
        metrics = trainer.train()
        elapsed = time.perf_counter() - start
    return {"tokens": real_tokens, "seconds": elapsed, "final_loss": metrics["train_loss"]}


def run_trl(args, conversations) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = load(args.model)
    rows = [{"prompt": c.messages[:-1], "completion": c.messages[-1:]} for c in conversations]
    config = SFTConfig(output_dir=tempfile.mkdtemp(), max_length=args.seq_len, packing=True, packing_strategy="bfd",
                       completion_only_loss=True, per_device_train_batch_size=args.batch,
                       gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=2e-5,
                       lr_scheduler_type="cosine", weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                       adam_epsilon=1e-5, max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no",
                       use_cpu=not torch.cuda.is_available(), bf16=args.precision == "bf16",
                       dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    counted = {"tokens": 0}
    training_step = trainer.training_step

    def counting_step(model, inputs, *args, **kwargs):  # counts what is trained, not what is prefetched
        mask = inputs.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return training_step(model, inputs, *args, **kwargs)

    trainer.training_step = counting_step
    start = time.perf_counter()
    out = trainer.train()
    elapsed = time.perf_counter() - start
    return {"tokens": counted["tokens"], "seconds": elapsed, "final_loss": out.training_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF checkpoint directory (e.g. the base stage's version)")
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="packed sequences per step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--only", choices=["chatalign", "trl"], default=None)
    args = parser.parse_args()
    from data import builtin

    conversations = builtin.build("train", args.examples, seed=0)
    results = {}
    for name, fn in (("chatalign", run_chatalign), ("trl", run_trl)):
        if args.only in (None, name):
            torch.manual_seed(0)
            results[name] = fn(args, conversations)
            r = results[name]
            print(f"{name}: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens'] / r['seconds']:.1f} tokens/s, "
                  f"final loss {r['final_loss']:.4f}", flush=True)
    print(f"| trainer | tokens | seconds | tokens/s |  ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.precision})")
    for name, r in results.items():
        print(f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
