"""PPO (stage 6): chatalign's PPO stage against TRL 0.19's PPOTrainer, same model, prompts, batches and machine.

Both start from the recipe's `ppo.policy` (a LoRA adapter on it, the reference being the adapter switched off),
train a critic initialised from the helpfulness RM with only its top `critic.top_layers` blocks, and answer the
same training prompts, `rollout_batch_size` a iteration, at temperature 1 with at most `max_new_tokens` tokens,
in micro-batches of `train.micro_batch_size`, for the same number of iterations. TRL 0.19 steps its optimizer
once per rollout batch and PPO epoch (its rollout batch is per-device batch x gradient accumulation), so the
benchmark needs `--set ppo.train.batch_size=<rollout_batch_size>`: one step on the whole batch on both sides.
TRL trains policy and critic with one optimizer (two parameter groups here, with each side's learning rate)
and does not clip gradients; ours clips each at `optim.grad_clip`. Both sides run in fp32: TRL's OnPolicyConfig
would otherwise turn bf16 on (CPU bfloat16 autocast around its training forward), so the worker sets bf16=False.
The worker checks that TRL runs exactly `--iterations` updates of `rollout_batch_size` episodes with one optimizer
step per update and PPO epoch (accelerate's gradient accumulation would otherwise step at every micro-batch of the
update that draws the last batch of an epoch over the prompts), and logs each update's seconds by phase
(generation, reference forward, critic values, reward, training forward, backward, optimizer step) to
`<workdir>/trl-worker.log` and this script's stderr.

The reward. TRL's PPOTrainer takes one sequence-classification reward model; ours is the safety-gated
combination of two RMs (reward/combine.py), whitened with running statistics, with a fixed penalty for answers
cut at the length limit. TRL receives that same reward through a small adapter module that looks to TRL like a
reward model (a `base_model_prefix` "backbone" and a `score` head) and calls the project's reward function on
the decoded answers; TRL's own missing-EOS penalty and reward whitening are off, so both learn from the same
signal. The RMs' forward passes are therefore the same code on both sides.

What is measured:
  - samples/s = answers / wall time of the iterations (rollout + scoring + update), excluding model loading;
    ours from the stage's `history.jsonl`, TRL's from a callback at the end of each of its updates; the
    rollout (generation) seconds of each side are reported apart.
  - reward gain: the starting policy and both trained policies answer the recipe's held-out prompts greedily
    and are scored by one judge, the project's reward function (mean LOGIT(R_c), and both RMs' means), in this
    process; neither framework's own log is used.

TRL runs in its own virtual environment (trl 0.19.x needs transformers < 5): `--trl-python` names its Python.
Checkpoints saved by transformers 5 name a tokenizer class older versions lack; the TRL side reads copies of
the checkpoint folders whose tokenizer_config.json names PreTrainedTokenizerFast (same tokenizer.json).

    python bench/bench_ppo.py --recipe recipes/smollm2-135m.yaml --iterations 4 --set ppo.train.batch_size=16 \
        --trl-python <venv with trl 0.19>/bin/python

Timings need an otherwise idle machine: with torch's default one thread per core, another busy process slows every
parallel op many times over. Each side reports the CPU-seconds other processes used while it ran (`other_cpu_s`);
`--threads` sets both sides' torch threads; `--only trl --iterations 1 --no-judge` times one TRL update alone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# TRL's loop, phase by phase: what the worker times and the section reports
TRL_PHASES = ("generation_s", "ref_forward_s", "value_s", "reward_s", "train_forward_s", "backward_s", "step_s")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ---------------------------------------------------------------------------------------------
# Shared: what both sides are given
# ---------------------------------------------------------------------------------------------

def legacy_checkpoint(path: Path, out: Path) -> Path:
    """A folder that links every file of checkpoint ``path`` but names PreTrainedTokenizerFast as the tokenizer
    class (what transformers 4.x loads from tokenizer.json)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        if f.is_file() and f.name != "tokenizer_config.json" and not (out / f.name).exists():
            os.symlink(f.resolve(), out / f.name)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def busy_cpu_s() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its waited-for children)."""
    import resource

    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    machine = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))
    return machine, own


def metered(run, *a) -> dict:
    """``run(*a)``'s result with ``other_cpu_s``: CPU seconds other processes used on the machine meanwhile. With
    torch's default one thread per core, any other busy process makes every parallel op wait for a descheduled
    thread (on the 2-core machine a 16x576 @ 576x2304 matmul took 0.57 ms at 1 thread and 16 ms at 2 threads
    while another job ran): such timings are not those of an idle machine."""
    machine0, own0 = busy_cpu_s()
    start = time.perf_counter()
    out = run(*a)
    machine1, own1 = busy_cpu_s()
    out["other_cpu_s"] = max(0.0, (machine1 - machine0) - (own1 - own0))
    out["wall_s"] = time.perf_counter() - start
    if out["other_cpu_s"] > 0.05 * out["wall_s"]:
        print(f"warning: other processes used {out['other_cpu_s']:.0f} CPU-seconds during this side's "
              f"{out['wall_s']:.0f} s: its timings are not those of an idle machine", file=sys.stderr, flush=True)
    return out


def load_setup(args):
    """The recipe, registry, the versions PPO starts from, training and held-out prompts."""
    from stages.common import open_registry
    from stages.recipe import load_recipe
    from stages.rollouts import load_prompts

    recipe = load_recipe(args.recipe, [f"ppo.iterations={args.iterations}", *args.set])
    registry = open_registry(recipe)
    section = recipe.ppo
    versions = {"policy": registry.resolve(section.policy), "helpful_rm": registry.resolve(section.helpful_rm),
                "safety_rm": registry.resolve(section.safety_rm), "critic": registry.resolve(section.critic.init)}
    prompts = load_prompts(section.prompts, recipe.seed, "ppo.prompts")
    heldout = load_prompts(section.heldout_prompts, recipe.seed, "ppo.heldout_prompts")
    return recipe, registry, versions, prompts, heldout


# ---------------------------------------------------------------------------------------------
# The judge (this environment): greedy held-out answers scored by the project's reward function
# ---------------------------------------------------------------------------------------------

def judge(model, tokenizer, recipe, heldout, reward_fn) -> dict:
    from stages.generation import answer

    texts = answer(model, tokenizer, heldout, recipe.model.template, recipe.ppo.max_new_tokens,
                   recipe.ppo.batch_size)
    r = reward_fn([p.messages for p in heldout], texts, [bool(p.meta.get("is_safety", False)) for p in heldout])
    return {"reward_mean": float(r.combined.mean()), "helpful_mean": float(r.helpful.mean()),
            "safety_mean": float(r.safety.mean()), "gated_rate": float(r.unsafe.float().mean())}


def run_ours(args, recipe) -> dict:
    """`chatalign stage ppo` with the held-out evaluations off (they are the judge's job here)."""
    from stages.common import open_registry

    sets = [f"ppo.iterations={args.iterations}", "ppo.heldout_prompts=[]", *args.set]
    cmd = [sys.executable, "-m", "stages", "stage", "ppo", "--recipe", args.recipe, "--force",
           *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"chatalign stage ppo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    version = open_registry(recipe).resolve("ppo@latest")
    history = [json.loads(line) for line in (version.path / "history.jsonl").read_text().splitlines()]
    return {"version": version.id, "path": str(version.path), "process_s": wall,
            "iterations": [{"rollout_s": h["rollout_s"], "total_s": h["rollout_s"] + h["update_s"],
                            "answers": h["answers"] if "answers" in h else recipe.ppo.rollout_batch_size,
                            "train_reward_mean": h["reward_mean"], "kl": h["kl"]} for h in history]}


def run_trl(args, recipe, versions, prompts, workdir: Path) -> dict:
    """This script in TRL's environment (``--trl-worker``), given the prompts' token ids and checkpoint copies."""
    from data.templates import render_prompt
    from stages.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(versions["policy"].path)
    spec = {
        "prompts": [{"messages": p.messages, "is_safety": bool(p.meta.get("is_safety", False)),
                     "input_ids": render_prompt(tokenizer, p.messages, recipe.model.template).input_ids}
                    for p in prompts],
        "paths": {k: str(legacy_checkpoint(v.path, workdir / "checkpoints" / k)) for k, v in versions.items()},
        "ppo": recipe.section("ppo"), "seed": recipe.seed, "iterations": args.iterations,
        "stop_token_id": tokenizer.convert_tokens_to_ids(tokenizer.eos_token),
    }
    (workdir / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    # The worker's output goes to trl-worker.log; its own progress lines (one an iteration) are echoed here.
    lines = []
    with (workdir / "trl-worker.log").open("w") as log, subprocess.Popen(
            [args.trl_python, str(Path(__file__).resolve()), "--trl-worker", str(workdir)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            lines = [*lines[-200:], line]
            if line.startswith("[trl-worker"):
                print(line, end="", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"TRL worker failed (full log: {workdir / 'trl-worker.log'}):\n{''.join(lines)[-8000:]}")
    out = json.loads((workdir / "result.json").read_text())
    out["process_s"] = wall
    return out


# ---------------------------------------------------------------------------------------------
# The TRL worker (TRL's environment)
# ---------------------------------------------------------------------------------------------

def trl_worker(workdir: Path) -> None:
    import torch
    import trl
    import trl.trainer.ppo_trainer as ppo_trainer
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl import PPOConfig, PPOTrainer

    from reward.combine import RewardFunction, Whitener
    from reward.model import freeze_below_top_layers
    from reward.scorer import load_scorer

    spec = json.loads((workdir / "spec.json").read_text())
    ppo, paths = spec["ppo"], spec["paths"]
    train = ppo["train"]
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], torch_dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(paths["critic"], num_labels=1,
                                                                torch_dtype=torch.float32)
    if ppo["critic"]["top_layers"] is not None:
        freeze_below_top_layers(critic, ppo["critic"]["top_layers"])
    reward_fn = RewardFunction(load_scorer(paths["helpful_rm"], batch_size=ppo["score_batch_size"], device="cpu"),
                               load_scorer(paths["safety_rm"], batch_size=ppo["score_batch_size"], device="cpu"),
                               threshold=ppo["safety_threshold"])
    prompts = spec["prompts"]
    by_ids = {tuple(p["input_ids"]): p for p in prompts}
    lengths = sorted({len(p["input_ids"]) for p in prompts})
    stop_id = spec["stop_token_id"]
    whitener = Whitener(ppo["whiten"])
    calls = {"reward_s": 0.0, "scored": 0}

    def combined_reward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What stages/ppo_loop.py gives an answer's last token: LOGIT(R_c) of the decoded answer, whitened with
        the running statistics of every scored training answer, or the truncation penalty."""
        t0 = time.perf_counter()
        conversations, texts, flags, truncated = [], [], [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            tokens = [t for t, m in zip(ids, mask) if m]
            prompt = next(by_ids[tuple(tokens[:n])] for n in lengths if tuple(tokens[:n]) in by_ids)
            response = tokens[len(prompt["input_ids"]):]
            truncated.append(stop_id not in response)
            conversations.append(prompt["messages"])
            flags.append(prompt["is_safety"])
            texts.append(tokenizer.decode(response, skip_special_tokens=True))
        scores = reward_fn(conversations, texts, flags).combined.double()
        kept = torch.tensor([s for s, t in zip(scores.tolist(), truncated) if not t], dtype=torch.float64)
        if ppo["whiten"] == "running":
            whitener.update(kept)
            mean, std = whitener.mean, whitener.std
        else:
            mean, std = (float(kept.mean()), float(kept.std(correction=0))) if len(kept) else (0.0, 1.0)
        whitened = (scores - mean) / (std + whitener.eps)
        if ppo["truncation_penalty"] is not None:
            whitened = torch.where(torch.tensor(truncated), torch.tensor(float(ppo["truncation_penalty"]),
                                                                         dtype=torch.float64), whitened)
        calls["reward_s"] += time.perf_counter() - t0
        calls["scored"] += len(texts)
        return whitened.float()

    class Backbone(torch.nn.Module):
        def forward(self, input_ids, attention_mask, **kwargs):
            from types import SimpleNamespace

            scores = combined_reward(input_ids, attention_mask)
            return SimpleNamespace(hidden_states=(scores[:, None, None].expand(-1, input_ids.shape[1], 1),))

    class CombinedRewardModel(torch.nn.Module):
        """TRL reads ``getattr(model, model.base_model_prefix)(...).hidden_states[-1]`` through ``model.score`` at
        the answer's last token: here every position carries the answer's reward."""
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone, self.score = Backbone(), torch.nn.Identity()

    rollout_batch, mini, micro = ppo["rollout_batch_size"], train["batch_size"], train["micro_batch_size"]
    # TRL 0.19's rollout batch is per_device_train_batch_size x gradient_accumulation_steps, and its optimizer
    # steps once every gradient_accumulation_steps micro-batches: one step per rollout batch and PPO epoch.
    if mini != rollout_batch:
        raise SystemExit(f"TRL 0.19's PPOTrainer takes one optimizer step per rollout batch and PPO epoch; give both "
                         f"sides the same schedule with --set ppo.train.batch_size={rollout_batch}")
    lora = train["lora"]
    config = PPOConfig(
        output_dir=str(workdir / "trl-out"), exp_name="bench", seed=spec["seed"], report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
        per_device_train_batch_size=micro, gradient_accumulation_steps=rollout_batch // micro, num_mini_batches=1,
        num_ppo_epochs=int(train["epochs"]),
        total_episodes=spec["iterations"] * rollout_batch, local_rollout_forward_batch_size=ppo["batch_size"],
        response_length=ppo["max_new_tokens"], temperature=ppo["temperature"], stop_token="eos",
        missing_eos_penalty=None, whiten_rewards=False, kl_coef=ppo["kl_coef"], kl_estimator=ppo["kl_estimator"],
        cliprange=ppo["clip"], cliprange_value=ppo["critic"]["value_clip"], vf_coef=1.0, gamma=ppo["gamma"],
        lam=ppo["lam"], num_sample_generations=0, learning_rate=train["optim"]["lr"],
        lr_scheduler_type="constant",
        # fp32 as ours. TRL's OnPolicyConfig turns bf16 on whenever fp16 is off (bf16=None -> True), on a CPU too:
        # accelerate then runs the training forward (policy and critic) under CPU bfloat16 autocast, while
        # generation and the no-grad forwards, which use the unwrapped models, stay in fp32.
        bf16=False, fp16=False)
    policy = get_peft_model(policy, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                               target_modules=lora["target_modules"], task_type="CAUSAL_LM"))

    # The same optimizer settings as each of our two engines: the policy's and the critic's learning rates,
    # AdamW betas/eps/weight decay (none on 1-D tensors), constant schedule; TRL steps them as one optimizer.
    def groups(module, optim):
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": decay, "weight_decay": optim["weight_decay"], "lr": optim["lr"]},
                {"params": no_decay, "weight_decay": 0.0, "lr": optim["lr"]}]
    optim_p, optim_c = train["optim"], ppo["critic"]["optim"]
    param_groups = [g for g in groups(policy, optim_p) + groups(critic, optim_c) if g["params"]]
    optimizer = torch.optim.AdamW(param_groups, betas=(optim_p["beta1"], optim_p["beta2"]), eps=optim_p["eps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    dataset = Dataset.from_list([{"input_ids": p["input_ids"]} for p in prompts])
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=CombinedRewardModel(), train_dataset=dataset, value_model=critic,
                         eval_dataset=dataset.select(range(min(4, len(dataset)))), optimizers=(optimizer, scheduler))
    # accelerate's gradient accumulation also syncs (steps the optimizer) at every micro-batch once its prepared
    # dataloader has handed out its last batch: TRL's update that draws the last rollout batch of an epoch over the
    # prompts would take gradient_accumulation_steps optimizer steps instead of one (seen on the tiny recipe).
    trainer.accelerator.gradient_state.plugin_kwargs["sync_with_dataloader"] = False

    # Where TRL's time goes: each phase of its loop, timed by wrapping the functions it calls by module name.
    def log(message: str) -> None:
        print(f"[trl-worker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    log(f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, nice {os.nice(0)}, mixed precision "
        f"{trainer.accelerator.mixed_precision} (bf16 {config.bf16}, fp16 {config.fp16}); schedule: "
        f"{config.num_total_batches} updates of {config.batch_size} episodes (total_episodes "
        f"{config.total_episodes}), {config.num_ppo_epochs} PPO epoch(s) x {config.num_mini_batches} mini-batch(es) "
        f"of {config.local_mini_batch_size} in micro-batches of {config.per_device_train_batch_size}, "
        f"rollout forward batch {config.local_rollout_forward_batch_size}, response_length {config.response_length}, "
        f"stop token id {trainer.stop_token_id}, eos {tokenizer.eos_token_id}, pad {tokenizer.pad_token_id}")
    if trainer.accelerator.mixed_precision != "no":
        raise SystemExit(f"TRL's accelerator runs in {trainer.accelerator.mixed_precision}, not fp32 as ours")
    if config.num_total_batches != spec["iterations"] or config.batch_size != rollout_batch:
        raise SystemExit(f"TRL would run {config.num_total_batches} updates of {config.batch_size} episodes, not "
                         f"{spec['iterations']} of {rollout_batch}")
    timings = {"iteration_end": [], "logs": [], "current": dict.fromkeys(TRL_PHASES, 0.0), "phases": [], "shapes": [],
               "optimizer_steps": 0}
    optimizer.register_step_post_hook(lambda *_: timings.__setitem__("optimizer_steps", timings["optimizer_steps"] + 1))

    def timed(name, fn, pick=None):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            key = pick(*a) if pick else name
            timings["current"][key] += time.perf_counter() - t0
            return out
        return wrapper

    generate_batches = ppo_trainer.batch_generation

    def generation(model, queries, *a, **k):
        t0 = time.perf_counter()
        query_responses, logits = generate_batches(model, queries, *a, **k)
        timings["current"]["generation_s"] += time.perf_counter() - t0
        responses = query_responses[:, queries.shape[1]:]
        stopped = (responses == stop_id).any(1)
        lengths = torch.where(stopped, (responses == stop_id).int().argmax(1) + 1,
                              (responses != tokenizer.pad_token_id).sum(1))
        timings["shapes"].append({"prompt_width": queries.shape[1], "generated_width": responses.shape[1],
                                  "answer_tokens_mean": float(lengths.float().mean()),
                                  "stopped": int(stopped.sum()), "threads": torch.get_num_threads()})
        return query_responses, logits
    ppo_trainer.batch_generation = generation
    ppo_trainer.forward = timed("forward", ppo_trainer.forward,
                                lambda *a: "train_forward_s" if torch.is_grad_enabled() else "ref_forward_s")
    ppo_trainer.get_reward = timed(
        "get_reward", ppo_trainer.get_reward,
        lambda model, *a: "reward_s" if isinstance(model, CombinedRewardModel) else "value_s")
    trainer.accelerator.backward = timed("backward_s", trainer.accelerator.backward)
    trainer.optimizer.step = timed("step_s", trainer.optimizer.step)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timings["train_begin"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            timings["iteration_end"].append(time.perf_counter())
            previous = timings["iteration_end"][-2] if len(timings["iteration_end"]) > 1 else timings["train_begin"]
            done = {**timings["current"], "total_s": timings["iteration_end"][-1] - previous,
                    **timings["shapes"][-1], "optimizer_steps": timings["optimizer_steps"]}
            timings["phases"].append(done)
            timings["current"], timings["optimizer_steps"] = dict.fromkeys(TRL_PHASES, 0.0), 0
            log(f"iteration {len(timings['phases'])}/{config.num_total_batches}: "
                + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in done.items()))

        def on_log(self, args, state, control, logs=None, **k):
            timings["logs"].append(dict(logs or {}))

    trainer.add_callback(Clock())
    trainer.train()
    steps = [ph["optimizer_steps"] for ph in timings["phases"]]
    if len(steps) != spec["iterations"] or set(steps) != {config.num_ppo_epochs * config.num_mini_batches}:
        raise SystemExit(f"TRL made {steps} optimizer steps in its updates, not {config.num_ppo_epochs} x "
                         f"{config.num_mini_batches} in each of {spec['iterations']}")
    iterations = [{"rollout_s": ph["generation_s"], "answers": rollout_batch, **ph,
                   "train_reward_mean": lg.get("objective/scores"), "kl": lg.get("objective/kl")}
                  for ph, lg in zip(timings["phases"], [lg for lg in timings["logs"] if "objective/scores" in lg])]
    trained = trainer.accelerator.unwrap_model(trainer.model).policy
    trained.save_pretrained(str(workdir / "trl-policy"))
    (workdir / "result.json").write_text(json.dumps({
        "iterations": iterations, "reward_s": calls["reward_s"], "scored": calls["scored"],
        "policy": str(workdir / "trl-policy"), "versions": {
            "trl": trl.__version__, "transformers": __import__("transformers").__version__,
            "torch": torch.__version__, "peft": __import__("peft").__version__}}))


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def summary(run: dict) -> dict:
    its = run["iterations"]
    total = sum(i["total_s"] for i in its)
    rollout = sum(i["rollout_s"] for i in its)
    answers = sum(i["answers"] for i in its)
    return {"iterations": len(its), "answers": answers, "seconds": total, "samples_per_s": answers / total,
            "rollout_s": rollout / len(its), "rest_s": (total - rollout) / len(its), "iteration_s": total / len(its)}


def section(args, recipe, results, judged, trl_versions) -> str:
    import torch
    import transformers

    from record import command_line, machine

    s = recipe.ppo
    lines = [
        f"## PPO (stage 6): chatalign vs TRL 0.19 PPOTrainer ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {machine()}",
        f"- chatalign: torch {torch.__version__}, transformers {transformers.__version__}; TRL side (own virtual "
        f"environment): trl {trl_versions['trl']}, transformers {trl_versions['transformers']}, "
        f"torch {trl_versions['torch']}, peft {trl_versions['peft']}",
        f"- recipe `{args.recipe}` `ppo:` section, {args.iterations} iterations of {s.rollout_batch_size} answers "
        f"(≤ {s.max_new_tokens} tokens, T = {s.temperature:g}), mini-batch {s.train.batch_size}, micro-batch "
        f"{s.train.micro_batch_size}, {int(s.train.epochs)} PPO epoch; LoRA r {s.train.lora.r} policy at lr "
        f"{s.train.optim.lr:g}, critic from the helpfulness RM training its top {s.critic.top_layers} blocks at lr "
        f"{s.critic.optim.lr:g}; β {s.kl_coef:g}; fp32",
        f"- judge: greedy answers to {len(judged['start']['_prompts'])} held-out prompts, scored by the project's "
        f"reward function (mean LOGIT(R_c))",
        f"- command: `{command_line()}`",
        "",
        "| trainer | iterations | answers | seconds | samples/s | rollout s/iter | rest s/iter | "
        "held-out R_c before → after | gain per iteration | helpful RM after | safety RM after |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    before = judged["start"]
    for name in ("chatalign", "trl"):
        if name not in results:
            continue
        m, j = summary(results[name]), judged[name]
        gain = (j["reward_mean"] - before["reward_mean"]) / m["iterations"]
        lines.append(f"| {name} | {m['iterations']} | {m['answers']} | {m['seconds']:.1f} | "
                     f"{m['samples_per_s']:.3f} | {m['rollout_s']:.1f} | {m['rest_s']:.1f} | {before['reward_mean']:.4f} → {j['reward_mean']:.4f}"
                     f" | {gain:+.4f} | {j['helpful_mean']:.4f} | {j['safety_mean']:.4f} |")
    if {"chatalign", "trl"} <= set(results):
        ratio = summary(results["chatalign"])["samples_per_s"] / summary(results["trl"])["samples_per_s"]
        lines += ["", f"chatalign / TRL samples/s: {ratio:.2f}x"]
    if "trl" in results:
        its = results["trl"]["iterations"]
        lines += ["", "TRL seconds per iteration by phase (mean): " + ", ".join(
            f"{k[:-2].replace('_', ' ')} {sum(i[k] for i in its) / len(its):.1f}" for k in TRL_PHASES)]
    lines += ["", "CPU-seconds used by other processes meanwhile (not an idle machine if well above 0): " + ", ".join(
        f"{name} {results[name]['other_cpu_s']:.0f} over {results[name]['wall_s']:.0f} s" for name in results)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-worker", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default="recipes/smollm2-135m.yaml")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (both)")
    parser.add_argument("--trl-python", default=None, help="Python of a virtual environment with trl 0.19.x")
    parser.add_argument("--only", choices=["chatalign", "trl"], default=None)
    parser.add_argument("--workdir", default=None, help="where TRL's side writes (default: a temporary folder)")
    parser.add_argument("--append-to", default=None, metavar="FILE", help="append the section to FILE")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of both sides and the judge (OMP_NUM_THREADS; default: torch's, one per "
                             "core)")
    parser.add_argument("--no-judge", action="store_true",
                        help="timing only: skip the held-out judge (and the section); raw numbers still written")
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(Path(args.trl_worker))
        return
    if args.only != "chatalign" and not args.trl_python:
        parser.error("--trl-python is needed for TRL's side (or --only chatalign)")

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from stages.checkpoint import load_causal_lm, load_tokenizer
    from stages.rollouts import load_reward_fn

    recipe, registry, versions, prompts, heldout = load_setup(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ppo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.only in (None, "chatalign"):
        results["chatalign"] = metered(run_ours, args, recipe)
        print("chatalign:", json.dumps({**summary(results["chatalign"]),
                                        "other_cpu_s": results["chatalign"]["other_cpu_s"]}), flush=True)
    trl_versions = {"trl": "-", "transformers": "-", "torch": "-", "peft": "-"}
    if args.only in (None, "trl"):
        results["trl"] = metered(run_trl, args, recipe, versions, prompts, workdir)
        trl_versions = results["trl"]["versions"]
        print("trl:", json.dumps({**summary(results["trl"]), "other_cpu_s": results["trl"]["other_cpu_s"]}),
              flush=True)

    if args.no_judge:
        (workdir / "bench.json").write_text(json.dumps({"results": results}, indent=2))
        print(f"raw numbers: {workdir / 'bench.json'}")
        return

    # The judge: one reward function, greedy answers, in this environment.
    reward_fn = load_reward_fn(versions["helpful_rm"], versions["safety_rm"], recipe.ppo.score_batch_size,
                               recipe.ppo.safety_threshold)
    tokenizer = load_tokenizer(versions["policy"].path)
    judged = {}
    start_model = load_causal_lm(versions["policy"].path, registry)
    judged["start"] = {**judge(start_model, tokenizer, recipe, heldout, reward_fn), "_prompts": heldout}
    if "chatalign" in results:
        judged["chatalign"] = judge(load_causal_lm(Path(results["chatalign"]["path"]), registry), tokenizer, recipe,
                                    heldout, reward_fn)
    if "trl" in results:
        from peft import PeftModel

        trl_model = PeftModel.from_pretrained(load_causal_lm(versions["policy"].path, registry),
                                              results["trl"]["policy"]).merge_and_unload()
        judged["trl"] = judge(trl_model, tokenizer, recipe, heldout, reward_fn)
    for name, j in judged.items():
        print(name, {k: v for k, v in j.items() if not k.startswith("_")}, flush=True)
    (workdir / "bench.json").write_text(json.dumps({"results": results, "judged": {
        k: {a: b for a, b in v.items() if not a.startswith("_")} for k, v in judged.items()}}, indent=2))
    text = section(args, recipe, results, judged, trl_versions)
    print(text)
    print(f"raw numbers: {workdir / 'bench.json'}")
    if args.append_to:
        with Path(args.append_to).open("a") as f:
            f.write("\n" + text)
    del torch


if __name__ == "__main__":
    main()
