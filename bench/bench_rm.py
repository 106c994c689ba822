"""Reward-model training: chatalign's stage-2 machinery against TRL's RewardTrainer, same model, data and machine.

Both start from the same reward model (the checkpoint's backbone with a scalar head, built once per
trainer by reward.model.build_reward_model with the same seed, so the initial weights are identical)
and train one epoch over the same preference pairs with the margin ranking loss (the same margin table:
TRL gets it as its `margin` column), the same batch and micro-batch, AdamW settings, cosine schedule
and number of steps. Pairs longer than --max-length are left out for both beforehand (TRL drops long
pairs, chatalign truncates them; neither then has to). TRL receives conversational prompt/chosen/
rejected columns, as its users give them, and tokenizes them with the same chat template.

pairs/s = training pairs / wall time of the training loop alone (data preparation excluded for both).
Accuracy = share of the test pairs where the chosen answer scores higher, scored for both trained models
by the same code (reward.scorer.RewardScorer, eval.rm.pair_metrics).

    python bench/bench_rm.py --model runs/smollm2-135m/sft/v1 --kind helpful --pairs 256 --test-pairs 128
    python bench/bench_rm.py --model runs/smollm2-135m/sft/v1 --append-to docs/BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import torch

from record import command_line, machine


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def fits(tokenizer, pair, max_length: int) -> bool:
    from reward.model import encode_response

    return all(len(encode_response(tokenizer, pair.prompt, answer)[0]) <= max_length
               for answer in (pair.chosen, pair.rejected))


def load_pairs(args, tokenizer):
    """(train pairs, test pairs, pairs left out for length): built-in pairs of --kind by default, or the
    train and test parts of --source (split by prompt, data/sources.py)."""
    from data.sources import load_preferences
    from stages.recipe import DataSource

    def first_fitting(candidates, n, what):
        """The first n candidates that fit, and how many were passed over on the way."""
        kept, skipped = [], 0
        for pair in candidates:
            if len(kept) == n:
                break
            if fits(tokenizer, pair, args.max_length):
                kept.append(pair)
            else:
                skipped += 1
        if len(kept) < n:
            raise SystemExit(f"only {len(kept)} of {len(candidates)} {what} pairs fit --max-length {args.max_length}; "
                             f"raise --max-length or ask for fewer pairs")
        return kept, skipped

    if args.source == "builtin":
        # generate more than needed, so that the pairs left out for length can be replaced
        train_pool = load_preferences([DataSource(n=args.pairs * 3, split="train")], 0, "train", kind=args.kind)
        test_pool = load_preferences([DataSource(n=args.test_pairs * 3, split="test")], 0, "test", kind=args.kind)
    else:
        part = {"source": args.source, "format": args.format, "test_fraction": 0.25}
        train_pool = load_preferences([DataSource(part="train", **part)], 0, "train", kind=args.kind)
        test_pool = load_preferences([DataSource(part="test", **part)], 0, "test", kind=args.kind)
    train, left_out = first_fitting(train_pool, args.pairs, "training")
    test, left_out_test = first_fitting(test_pool, args.test_pairs, "test")
    return train, test, left_out + left_out_test


def margins(pairs, table: str) -> list[float]:
    from reward.loss import margins_for

    return margins_for([p.rating for p in pairs], [p.margin for p in pairs], table).tolist()


# ---------------------------------------------------------------------------------------------
# The two trainers
# ---------------------------------------------------------------------------------------------

def fresh_reward_model(args):
    from reward.model import build_reward_model

    model = build_reward_model(args.model, seed=0)
    return model.to(torch.bfloat16) if args.precision == "bf16" else model


def warm_up(args, tokenizer, train, test) -> dict:
    """One untimed forward and backward pass on a throwaway RM, so that whichever trainer runs first does
    not pay the kernels' first-call costs; and the untrained RM's test accuracy, as the baseline."""
    from reward.model import PairLoss, collate_pairs, encode_pairs

    model = fresh_reward_model(args)
    examples, _ = encode_pairs(tokenizer, train[:args.micro_batch], "model", args.max_length)
    loss, _, _ = PairLoss(args.margin)(model, collate_pairs(examples, tokenizer.pad_token_id))
    loss.backward()
    return score(args, model, tokenizer, test)


def run_chatalign(args, tokenizer, train, test) -> dict:
    from reward.model import PairLoss, collate_pairs, encode_pairs
    from stages.engine import TrainSettings
    from stages.recipe import OptimSection
    from stages.trainer import Trainer, step_examples

    model = fresh_reward_model(args)
    examples, _ = encode_pairs(tokenizer, train, "model", args.max_length)
    optim = OptimSection(lr=args.lr, schedule="cosine", warmup_ratio=0.0, warmup_min_steps=0, min_lr_ratio=0.0,
                         weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-5, grad_clip=1.0)
    settings = TrainSettings(optim=optim, batch_size=args.batch, micro_batch_size=args.micro_batch, epochs=1.0,
                             max_steps=args.steps, precision=args.precision, checkpoint_every=10 ** 9,
                             eval_every=10 ** 9, seed=0)
    pad_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(model, examples, [], lambda batch: collate_pairs(batch, pad_id), settings, Path(workdir),
                          PairLoss(args.margin), desc="chatalign")
        tokens = sum(len(examples[i]["chosen_ids"]) + len(examples[i]["rejected_ids"])
                     for step in range(trainer.total_steps)
                     for i in step_examples(step, len(examples), trainer.steps_per_epoch, args.batch, 0))
        start = time.perf_counter()
        metrics = trainer.train()
        seconds = time.perf_counter() - start
        trained, _ = trainer.unwrapped_state()
    return {"pairs": trainer.total_steps * args.batch, "tokens": tokens, "seconds": seconds,
            "final_loss": metrics["train_loss"], **score(args, trained, tokenizer, test)}


def run_trl(args, tokenizer, train, test) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model = fresh_reward_model(args)
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "margin": m}
            for p, m in zip(train, margins(train, args.margin))]
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-rm-trl-"), max_length=args.max_length,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=args.batch // args.micro_batch,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-5, max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(),
        logging_steps=10 ** 6, report_to=[], save_strategy="no", eval_strategy="no", dataloader_num_workers=0,
        seed=0, disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer)
    if len(trainer.train_dataset) != len(rows):
        raise SystemExit(f"TRL left out {len(rows) - len(trainer.train_dataset)} of {len(rows)} pairs; the "
                         "benchmark would compare different data")
    counted = {"tokens": 0, "pairs": 0}
    collator = trainer.data_collator

    def counting(features):
        counted["tokens"] += sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)
        counted["pairs"] += len(features)
        return collator(features)

    trainer.data_collator = counting
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    trained = trainer.accelerator.unwrap_model(trainer.model)
    return {"pairs": counted["pairs"], "tokens": counted["tokens"], "seconds": seconds,
            "final_loss": out.training_loss, **score(args, trained, tokenizer, test)}


def score(args, model, tokenizer, test) -> dict:
    """Test accuracy (overall and per rating) of a trained RM, with the project's scorer."""
    from eval.rm import pair_metrics
    from reward.scorer import RewardScorer

    scorer = RewardScorer(model, tokenizer, template="model", batch_size=args.micro_batch * 2,
                          max_length=args.max_length)
    chosen, rejected = scorer.score_pairs(test)
    metrics = pair_metrics(chosen, rejected, [p.rating for p in test])
    return {"accuracy": metrics["accuracy"],
            "per_rating": {r: v["accuracy"] for r, v in metrics["per_rating"].items()}}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def table(results: dict, args) -> str:
    lines = ["| trainer | pairs | steps | seconds | pairs/s | tokens/s | final train loss | test accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['pairs']} | {args.steps} | {r['seconds']:.1f} | {r['pairs'] / r['seconds']:.2f} | "
                     f"{r['tokens'] / r['seconds']:.1f} | {r['final_loss']:.4f} | {100 * r['accuracy']:.1f} |")
    return "\n".join(lines)


def section(results: dict, args, left_out: int, untrained: dict) -> str:
    import transformers
    import trl

    data = f"built-in {args.kind} pairs" if args.source == "builtin" else f"`{args.source}` ({args.format})"
    return "\n".join([
        f"## Reward-model training: chatalign vs TRL RewardTrainer ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"precision {args.precision}",
        f"- model `{args.model.replace(os.getcwd().rstrip('/') + '/', '')}`; data: {data}, {args.pairs} training "
        f"pairs and {args.test_pairs} test pairs ({left_out} longer than {args.max_length} tokens passed over); margin "
        f"{args.margin}; batch {args.batch} (micro {args.micro_batch}), lr {args.lr} cosine, {args.steps} steps",
        f"- test accuracy of the untrained RM (both start from it): {100 * untrained['accuracy']:.1f}",
        f"- command: `{command_line()}`",
        "",
        table(results, args),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="chat checkpoint directory (e.g. runs/smollm2-135m/sft/v1)")
    parser.add_argument("--kind", choices=["helpful", "safety"], default="helpful", help="built-in pairs of this RM")
    parser.add_argument("--source", default="builtin",
                        help="'builtin', or a preference file whose train/test parts (by prompt) are used")
    parser.add_argument("--format", default="auto", help="row format of --source (docs/DATA.md)")
    parser.add_argument("--pairs", type=int, default=256, help="training pairs (one epoch)")
    parser.add_argument("--test-pairs", type=int, default=128)
    parser.add_argument("--margin", choices=["none", "small", "large"], default="small")
    parser.add_argument("--batch", type=int, default=16, help="pairs per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=8, help="pairs per forward pass")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256, help="tokens; longer pairs are left out")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--only", choices=["chatalign", "trl"], default=None)
    parser.add_argument("--append-to", default=None, metavar="FILE",
                        help="append a dated section (machine, versions, command, table) to FILE, "
                             "e.g. docs/BENCHMARKS.md")
    args = parser.parse_args()
    if args.batch % args.micro_batch:
        parser.error(f"--batch {args.batch} must be a multiple of --micro-batch {args.micro_batch}")
    args.steps = args.pairs // args.batch
    if args.steps < 1:
        parser.error(f"--pairs {args.pairs} is less than one batch ({args.batch})")
    args.pairs = args.steps * args.batch  # whole batches only, so both trainers see exactly the same pairs

    from stages.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(Path(args.model))
    train, test, left_out = load_pairs(args, tokenizer)
    print(f"{len(train)} training pairs and {len(test)} test pairs ({left_out} longer than {args.max_length} tokens "
          f"passed over), {args.steps} steps of {args.batch}", flush=True)
    untrained = warm_up(args, tokenizer, train, test)
    print(f"untrained RM: test accuracy {100 * untrained['accuracy']:.1f}% {untrained['per_rating']}", flush=True)
    results = {}
    for name, fn in (("chatalign", run_chatalign), ("trl", run_trl)):
        if args.only in (None, name):
            torch.manual_seed(0)
            r = results[name] = fn(args, tokenizer, train, test)
            print(f"{name}: {r['pairs']} pairs in {r['seconds']:.1f} s = {r['pairs'] / r['seconds']:.2f} pairs/s, "
                  f"final loss {r['final_loss']:.4f}, test accuracy {100 * r['accuracy']:.1f}% {r['per_rating']}",
                  flush=True)
    if {"chatalign", "trl"} <= set(results) and results["chatalign"]["tokens"] != results["trl"]["tokens"]:
        print(f"note: the trainers saw different token counts ({results['chatalign']['tokens']} vs "
              f"{results['trl']['tokens']}): TRL's tokenization or data order differs", flush=True)
    text = section(results, args, left_out, untrained)
    print(text)
    if args.append_to:
        path = Path(args.append_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("# Benchmarks\n\nEach section is appended by the script named in its command.\n\n")
        with path.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
