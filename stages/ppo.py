"""Stage 6: PPO on the safety-gated combined reward with a per-token KL penalty (Llama 2 §3.2.3).

``R(g|p) = WHITEN(LOGIT(R_c(g|p))) - β·KL(π_θ(g|p) ‖ π_0(g|p))``: the reward of reward/combine.py (both RMs,
the safety gate at 0.15, LOGIT, running whitening of training scores) on an answer's last token, and
``-β·(log π_θ - log π_0)`` on every answer token. The models: the policy (``distill@latest`` by default:
the paper's PPO follows the safety stages), the frozen reference π0 (the same starting checkpoint: with LoRA,
the policy with its adapter off), a critic whose scalar head is read at every token (initialized from the
helpfulness RM), and both frozen RMs. The loop is in stages/ppo_loop.py. ``ppo/v<N>`` holds the policy (a
LoRA adapter naming its base, or full weights) with the critic in ``critic/``, ``history.jsonl`` (one line
per iteration), ``heldout.jsonl`` (the held-out answers before and after) and ``ppo.png`` (reward and KL over
iterations).
"""
from __future__ import annotations

import json
import logging
import shutil
from typing import Any

from data.builtin.oracle import score_answers as oracle_scores
from data.loaders import write_jsonl
from data.records import prompt_key
from data.runtime import default_device, is_main_process
from data.sources import fingerprint
from reward.model import build_reward_model, freeze_below_top_layers
from stages.catalogue import stage
from stages.checkpoint import load_causal_lm, load_tokenizer, save_model
from stages.common import StageRun, run_stage
from stages.engine import TrainSettings
from stages.finetune import with_lora
from stages.ppo_loop import BEST_DIR, Models, PPOLoop, ValueModel, gathered, strip
from stages.recipe import PPOSection, Recipe
from stages.registry import Registry, Version
from stages.rollouts import load_prompts, load_reward_fn

log = logging.getLogger("chatalign.ppo")

STAGE, SECTION = stage("ppo").versions[0], stage("ppo").section  # "ppo", its section
CRITIC_DIR = "critic"
HISTORY_FILE = "history.jsonl"
HELDOUT_FILE = "heldout.jsonl"
PLOT_FILE = "ppo.png"


def load_critic(version: Version, registry: Registry, top_layers: int | None, seed: int) -> ValueModel:
    """The critic from a reward model (its scalar head becomes the value head) or from a causal LM (a fresh head)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from data.runtime import whole_model_init

    config = AutoConfig.from_pretrained(str(version.path)) if (version.path / "config.json").exists() else None
    if config is not None and any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        with whole_model_init():
            model = AutoModelForSequenceClassification.from_pretrained(str(version.path))
    else:
        tokenizer = load_tokenizer(version.path)
        model = build_reward_model(load_causal_lm(version.path, registry), tokenizer.pad_token_id, seed)
    if top_layers is not None:
        freeze_below_top_layers(model, top_layers)
    return ValueModel(model)


def load_models(recipe: Recipe, registry: Registry, policy: Version, critic: Version) -> Models:
    section = recipe.ppo
    tokenizer = load_tokenizer(policy.path)
    model = load_causal_lm(policy.path, registry)
    reference = None
    if section.train.lora.enabled:
        model = with_lora(model, section.train.lora, "CAUSAL_LM")
    else:  # a second full copy, frozen: the memory of one more model (docs/PPO.md)
        reference = load_causal_lm(policy.path, registry).to(default_device())
    return Models(model, reference, load_critic(critic, registry, section.critic.top_layers, recipe.seed), tokenizer)


def oracle_of(recipe: Recipe, prompts: list) -> Any:
    """The built-in oracle's judgement of held-out answers when every prompt is built-in (else None)."""
    if not recipe.ppo.oracle_eval or not all(p.meta.get("source") == "builtin" for p in prompts):
        return None

    def judge(heldout, texts):
        scored = oracle_scores(heldout, texts)
        return {k: v for k, v in scored.items() if v is None or isinstance(v, (int, float))}
    return judge


def plot(history: list[dict[str, Any]], evals: list[dict[str, Any]], path) -> None:
    """Reward (training answers, and greedy held-out answers) and KL to π0 over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    iterations = [h["iteration"] for h in history]
    top.plot(iterations, [h["reward_mean"] for h in history], marker=".", label="training answers (T sampled)")
    if evals:
        top.plot([e["iteration"] for e in evals], [e["reward_mean"] for e in evals], marker="o",
                 label="held-out answers (greedy)")
    top.set_ylabel("mean LOGIT(R_c)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(iterations, [h["kl"] for h in history], marker=".", color="tab:red")
    bottom.set_ylabel("KL(π_θ ‖ π_0) per answer (nats)")
    bottom.set_xlabel("iteration")
    bottom.grid(alpha=0.3)
    fig.suptitle("PPO: reward and KL to the reference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def body(run: StageRun, recipe: Recipe, registry: Registry, policy: Version, helpful_rm: Version,
         safety_rm: Version, critic: Version) -> None:
    section: PPOSection = recipe.ppo
    prompts = load_prompts(section.prompts, recipe.seed, f"{SECTION}.prompts")
    heldout = load_prompts(section.heldout_prompts, recipe.seed, f"{SECTION}.heldout_prompts") \
        if section.heldout_prompts else []
    models = load_models(recipe, registry, policy, critic)
    reward_fn = load_reward_fn(helpful_rm, safety_rm, section.score_batch_size, section.safety_threshold)
    critic_settings = TrainSettings.from_section(section.train, recipe.seed)
    critic_settings.optim = section.critic.optim
    loop = PPOLoop(models, section, prompts, heldout, reward_fn, recipe.model.template, recipe.seed, run.workdir,
                   critic_settings, TrainSettings.from_section(section.train, recipe.seed), resume=run.resume,
                   log_fn=run.log, oracle=oracle_of(recipe, heldout))
    result = loop.train()
    policy_model = loop.policy
    critic_model = loop.critic.model
    with loop.gathered_weights(), gathered(loop.critic_engine):  # full weights under ZeRO-3
        if is_main_process():
            save_model(policy_model, models.tokenizer, run.workdir,
                       base_version=policy if section.train.lora.enabled else None)
            critic_model.save_pretrained(str(run.workdir / CRITIC_DIR), safe_serialization=True)
    if is_main_process():
        write_jsonl(run.workdir / HISTORY_FILE, result["history"])
        evals = result["evals"]
        if evals and "answers" in evals[0]:
            first, last = evals[0], next((e for e in reversed(evals) if e["iteration"] == result["committed_iteration"]
                                          and "answers" in e), evals[-1])
            write_jsonl(run.workdir / HELDOUT_FILE, [
                {"prompt_key": prompt_key(p.messages), "prompt_id": p.meta.get("id"), "messages": p.messages,
                 "before": a, "after": b} for p, a, b in zip(heldout, first["answers"], last.get("answers", []))])
        if result["history"]:
            plot(result["history"], [strip(e) for e in evals], run.workdir / PLOT_FILE)
        shutil.rmtree(run.workdir / BEST_DIR, ignore_errors=True)  # work state, not part of the version
        (run.workdir / "eval.json").write_text(json.dumps({"evals": [strip(e) for e in evals],
                                                           "best": result["best"]}, indent=2) + "\n")
    evals = [strip(e) for e in result["evals"]]
    history = result["history"]
    metrics: dict[str, Any] = {
        "iterations_run": result["iterations_run"], "committed_iteration": result["committed_iteration"],
        "stopped_early": result["stopped_early"], "optimizer_steps": result["optimizer_steps"],
        "kl_coef_final": result["kl_coef_final"], "whitener": result["whitener"], "history": history, "evals": evals}
    if history:
        metrics.update({"reward_mean_first": history[0]["reward_mean"], "reward_mean_last": history[-1]["reward_mean"],
                        "kl_last": history[-1]["kl"], "kl_max": max(h["kl"] for h in history),
                        "samples_per_s": sum(h["samples_per_s"] for h in history) / len(history)})
    if evals:
        committed = next((e for e in evals if e["iteration"] == result["committed_iteration"]), evals[-1])
        metrics.update({"heldout_reward_mean_initial": evals[0]["reward_mean"],
                        "heldout_reward_mean": committed["reward_mean"]})
        for key in ("oracle",):
            if key in evals[0]:
                metrics["initial_oracle"], metrics["oracle"] = evals[0][key], committed.get(key)
    run.metrics.update(metrics)
    run.extra["ppo"] = {"policy": policy.id, "reference": f"{policy.id} (adapter off)" if section.train.lora.enabled
                        else policy.id, "critic_init": critic.id, "critic_dir": CRITIC_DIR}


def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    """One PPO run from ``ppo.policy``, committed as ppo/v<N>."""
    section = recipe.ppo
    policy = registry.resolve(section.policy)
    helpful_rm, safety_rm = registry.resolve(section.helpful_rm), registry.resolve(section.safety_rm)
    critic = registry.resolve(section.critic.init)
    prompts = load_prompts(section.prompts, recipe.seed, f"{SECTION}.prompts")
    heldout = load_prompts(section.heldout_prompts, recipe.seed, f"{SECTION}.heldout_prompts") \
        if section.heldout_prompts else []
    parents = []
    for version in (policy, helpful_rm, safety_rm, critic):
        if all(version.id != p.id for p in parents):
            parents.append(version)
    return [run_stage(recipe, registry, STAGE,
                      lambda r: body(r, recipe, registry, policy, helpful_rm, safety_rm, critic),
                      section=recipe.section(SECTION), parents=parents,
                      data_fingerprints={"prompts": fingerprint(prompts), "heldout": fingerprint(heldout)},
                      force=force, resume=resume)]
