"""Stage 2: the helpfulness and the safety reward model (Llama 2 §3.2.2).

Both start from the chat checkpoint (``reward.parent``, default sft@latest) with the LM head replaced
by a scalar head, and train for one epoch on the margin ranking loss ``-log σ(r_c - r_r - m(rating))``
(lr 1e-5, cosine to 10%, warmup 3% / at least 5 steps). Each RM is its own registry version:
``rm-helpful`` and ``rm-safety``. Data mixes, as in the paper:

* helpfulness RM: all helpfulness pairs + as many again (``helpful_mix_ratio``) sampled uniformly
  from the safety and other pairs;
* safety RM: all safety (and other safety) pairs + helpfulness pairs making up
  ``safety_mix_helpful_share`` (10%) of the mix;
* pairs whose chosen answer is unsafe and rejected answer safe are dropped before mixing
  (data.mixtures.build_rm_mixtures does all three);
* with ``reward.on_policy``, the paper's on-policy batch: the policy the RMs start from answers prompts the
  built-in oracle can judge, and its needless refusals and unsafe answers become pairs below a reference
  answer (data.mixtures.on_policy_pairs), added to the helpfulness and safety data before mixing.

After training each RM is evaluated on both test sets (accuracy per rating, calibration, plots in
the version directory, summary in the manifest metrics). Saved RMs are plain
``*ForSequenceClassification`` checkpoints (LoRA adapters are merged) so that
``AutoModelForSequenceClassification.from_pretrained`` loads them unchanged.

The stage is ``reward`` on the command line and in the recipe, and writes two registry stages,
``rm-helpful`` and ``rm-safety`` (stages/catalogue.py maps the names).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from data.mixtures import build_rm_mixtures, on_policy_pairs
from data.records import Preference, json_default
from data.runtime import default_device, is_main_process, phase
from data.sources import fingerprint, load_preferences
from eval.rm import evaluate_scorer
from reward.calibration import Platt, fit_platt, labelled_answers
from reward.model import PairLoss, build_reward_model, collate_pairs, encode_pairs, freeze_below_top_layers
from reward.scorer import RewardScorer
from stages.catalogue import stage
from stages.checkpoint import load_causal_lm, load_tokenizer
from stages.common import StageRun, run_stage
from stages.finetune import train_and_save
from stages.generation import answer
from stages.recipe import Recipe, RecipeError, RewardSection
from stages.registry import Registry, Version
from stages.rollouts import load_prompts

log = logging.getLogger("chatalign.reward")

KINDS = ("helpful", "safety")
STAGE_NAMES = dict(zip(KINDS, stage("reward").versions))  # the registry stage of each RM: rm-helpful, rm-safety


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

@dataclass
class RMData:
    """The preference data of stage 2 as loaded from the recipe, before mixing."""

    helpful: list[Preference]
    safety: list[Preference]
    helpful_other: list[Preference] = field(default_factory=list)
    safety_other: list[Preference] = field(default_factory=list)
    dropped_identical: dict[str, int] = field(default_factory=dict)  # pairs with chosen == rejected, per recipe key
    on_policy: dict[str, Any] = field(default_factory=dict)  # what the parent policy's own answers gave


@dataclass
class RMMixtures:
    """Training pairs of each RM, and what the manifest records about them."""

    helpful: list[Preference]
    safety: list[Preference]
    stats: dict[str, Any]

    def manifest_entry(self, kind: str) -> dict[str, Any]:
        """One RM's mixture counts, plus what was dropped and kept per source."""
        return {"counts": self.stats[f"{kind}_rm"], "resampled": self.stats["resampled"][f"{kind}_rm"],
                "dropped_unsafe_chosen": self.stats["dropped_unsafe_chosen"], "kept": self.stats["kept"],
                **({"on_policy": self.stats["on_policy"]} if self.stats.get("on_policy") else {})}


def mix_reward_data(data: RMData, section: RewardSection, seed: int) -> RMMixtures:
    """The two training mixtures (data.mixtures.build_rm_mixtures). The recipe's sources map onto the
    paper's: ``safety.other_data`` (e.g. Anthropic Harmless) counts as safety data; ``helpful.other_data``
    (open-source sets) is the "other" data sampled, with the safety data, into the helpfulness RM's mix."""
    helpful, safety, stats = build_rm_mixtures(
        data.helpful, data.safety + data.safety_other, data.helpful_other,
        helpful_mix_ratio=section.helpful_mix_ratio, safety_mix_helpful_share=section.safety_mix_helpful_share,
        drop_unsafe_chosen=section.drop_unsafe_chosen, seed=seed)
    stats["on_policy"] = data.on_policy
    dropped = sum(stats["dropped_unsafe_chosen"].values())
    if dropped:
        log.info("dropped %d pairs whose chosen answer is unsafe and rejected answer safe: %s", dropped,
                 stats["dropped_unsafe_chosen"])
    return RMMixtures(helpful=helpful, safety=safety, stats=stats)


def load_reward_data(section: RewardSection, seed: int) -> tuple[RMData, dict[str, list[Preference]]]:
    """Training data of both RMs and the test sets (named "helpful" and "safety")."""
    dropped: dict[str, int] = {}
    load = partial(load_preferences, identical=section.identical_pairs, dropped=dropped)
    data = RMData(
        helpful=load(section.helpful.data, seed, "reward.helpful.data", kind="helpful"),
        safety=load(section.safety.data, seed, "reward.safety.data", kind="safety"),
        helpful_other=load(section.helpful.other_data, seed, "reward.helpful.other_data", kind="helpful"),
        safety_other=load(section.safety.other_data, seed, "reward.safety.other_data", kind="safety"),
        dropped_identical=dropped,
    )
    tests = {kind: load(getattr(section, kind).test, seed, f"reward.{kind}.test", kind=kind) for kind in KINDS}
    return data, tests


@dataclass
class OnPolicyBatch:
    """The prompts of ``reward.on_policy`` and the policy that answers them; ``key`` names the answers (the
    policy's content hash, the prompts and everything greedy answers depend on), so it stands in for the pairs
    in the stage's input fingerprint and names their cache before anything is sampled."""

    policy: Version
    prompts: list
    key: str

    @classmethod
    def from_recipe(cls, registry: Registry, recipe: Recipe, parent: Version) -> "OnPolicyBatch | None":
        section = recipe.reward.on_policy
        if not section.prompts:
            return None
        prompts = load_prompts(section.prompts, recipe.seed, "reward.on_policy.prompts")
        policy = registry.resolve(section.policy) if section.policy else parent
        key = {"policy": policy.content_hash, "prompts": fingerprint(prompts), "template": recipe.model.template,
               "max_new_tokens": section.max_new_tokens}
        return cls(policy, prompts, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24])


@phase("sampling")
def policy_answers(registry: Registry, recipe: Recipe, batch: OnPolicyBatch) -> list[str]:
    """The policy's greedy answers to the on-policy prompts, kept in the registry's .cache under the batch's key
    (a rerun of the stage, or the second RM after the first, does not sample again)."""
    section = recipe.reward.on_policy
    cache = registry.root / ".cache" / "on-policy" / f"{batch.key}.json"
    if cache.exists():
        answers = json.loads(cache.read_text())["answers"]
        if len(answers) == len(batch.prompts):
            log.info("on-policy pairs: %s's answers to %d prompts are cached (%s)", batch.policy.id,
                     len(answers), cache.name)
            return answers
    model = load_causal_lm(batch.policy.path, registry).to(default_device()).eval()
    answers = answer(model, load_tokenizer(batch.policy.path), batch.prompts, recipe.model.template,
                     section.max_new_tokens, section.batch_size)
    if is_main_process():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"policy": batch.policy.id, "answers": answers}) + "\n")
        tmp.replace(cache)
    return answers


def with_on_policy_pairs(data: RMData, registry: Registry, recipe: Recipe, batch: OnPolicyBatch) -> RMData:
    """Stage 2's on-policy batch (``reward.on_policy``) added to the loaded data: the policy's needless refusals
    of benign prompts join the helpfulness RM's pairs, its unsafe answers to harmful requests the safety RM's
    (data.mixtures.on_policy_pairs)."""
    answers = policy_answers(registry, recipe, batch)
    try:
        helpful, safety, stats = on_policy_pairs(batch.prompts, answers, "reward.on_policy.prompts")
    except ValueError as e:
        raise RecipeError(str(e)) from e
    log.info("on-policy pairs from %s: %d of %d prompts; %d needless refusals (helpfulness RM), %d unsafe answers "
             "(safety RM)", batch.policy.id, len(helpful) + len(safety), len(batch.prompts), len(helpful), len(safety))
    return RMData(helpful=data.helpful + helpful, safety=data.safety + safety, helpful_other=data.helpful_other,
                  safety_other=data.safety_other, dropped_identical=data.dropped_identical,
                  on_policy={"policy": batch.policy.id, **stats})


def write_on_policy_pairs(run: StageRun, pairs: list[Preference]) -> None:
    """The on-policy pairs an RM trained on, beside it (JSONL, the preference format stage 2 reads)."""
    mine = [pair for pair in pairs if pair.meta.get("on_policy")]
    if mine and is_main_process():
        seen, rows = set(), []
        for pair in mine:  # a pair drawn twice into a mix is written once
            if pair.meta["id"] not in seen:
                seen.add(pair.meta["id"])
                rows.append(json.dumps(pair.to_dict(), default=json_default))
        (run.workdir / "on_policy_pairs.jsonl").write_text("\n".join(rows) + "\n")


# ---------------------------------------------------------------------------------------------
# Training one RM
# ---------------------------------------------------------------------------------------------

def eval_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's share of eval.json: accuracy overall and per rating, ECE, unsafe recall per test set."""
    summary: dict[str, Any] = {}
    for set_name, m in report["test_sets"].items():
        summary[f"accuracy_{set_name}"] = m["accuracy"]
        summary[f"eval_{set_name}"] = {
            "n": m["n"], "accuracy": m["accuracy"], "ece": m["calibration"]["ece"],
            "per_rating": {rating: v["accuracy"] for rating, v in m["per_rating"].items()},
            **({"unsafe_recall": m["unsafe_recall"]} if "unsafe_recall" in m else {}),
            **({"gate": m["gate"]} if "gate" in m else {})}
    return summary


def train_reward_model(run: StageRun, recipe: Recipe, parent: Version, kind: str, train_pairs: list[Preference],
                       test_sets: dict[str, list[Preference]]) -> dict[str, Any]:
    """Train one RM from ``parent`` on ``train_pairs``, save it into the run's workdir, evaluate it there."""
    section, template, stage = recipe.reward, recipe.model.template, STAGE_NAMES[kind]
    tokenizer = load_tokenizer(parent.path)
    model = build_reward_model(load_causal_lm(parent.path, run.registry), tokenizer.pad_token_id, seed=recipe.seed)
    if section.top_layers is not None:
        freeze_below_top_layers(model, section.top_layers)
    train_examples, train_stats = encode_pairs(tokenizer, train_pairs, template, section.max_length)
    heldout_examples, heldout_stats = encode_pairs(tokenizer, test_sets[kind], template, section.max_length)
    aux_weight = section.safety_aux_weight if kind == "safety" and section.safety_aux_loss else 0.0
    pad_id = tokenizer.pad_token_id
    # merged when trained with LoRA, so the RM loads with AutoModelForSequenceClassification alone;
    # no final held-out pass: evaluate_saved scores the test sets with the saved RM
    _, metrics = train_and_save(run, model, tokenizer, train_examples, heldout_examples,
                                lambda batch: collate_pairs(batch, pad_id), section.train, recipe.seed,
                                PairLoss(section.margin, aux_weight), stage, task_type="SEQ_CLS", final_eval=False)
    metrics["data"] = {"train": train_stats.to_dict(), "heldout": heldout_stats.to_dict()}
    if is_main_process():
        calibration = None
        if kind == "safety" and section.safety_calibration:
            calibration, metrics["calibration"] = calibrate_saved(run, recipe)
        metrics.update(evaluate_saved(run, recipe, kind, test_sets, calibration))
    return metrics


@phase("evaluation")
def calibrate_saved(run: StageRun, recipe: Recipe) -> tuple[Platt | None, dict[str, Any]]:
    """Fit Platt scaling of the saved safety RM on the labelled answers of ``reward.safety_calibration``."""
    section = recipe.reward
    pairs = load_preferences(section.safety_calibration, recipe.seed, "reward.safety_calibration", kind="safety")
    conversations, answers, labels = labelled_answers(pairs)
    if len(set(labels)) < 2:
        raise RecipeError(f"reward.safety_calibration: its {len(labels)} labelled answers are all "
                          f"{'safe' if labels and labels[0] else 'unsafe'}; Platt scaling needs safe and unsafe "
                          "answers (give data with chosen_safe/rejected_safe labels, or [] to turn it off)")
    scorer = RewardScorer(run.workdir, template=recipe.model.template, batch_size=section.train.micro_batch_size * 2,
                          device=default_device(), max_length=section.max_length)
    raw = scorer.score(conversations, answers)
    try:
        platt = fit_platt(raw, labels)
    except ValueError as e:  # an RM that has not learned the order yet: keep its raw level, say so
        log.warning("safety RM calibration skipped: %s", e)
        return None, {"skipped": str(e), "answers": len(labels), "unsafe": labels.count(False)}
    log.info("safety RM calibration on %d labelled answers: calibrated = %.3f * score %+.3f", len(labels),
             platt.scale, platt.bias)
    return platt, {**platt.to_dict(), "answers": len(labels), "unsafe": labels.count(False)}


@phase("evaluation")
def evaluate_saved(run: StageRun, recipe: Recipe, kind: str, test_sets: dict[str, list[Preference]],
                   calibration: Platt | None = None) -> dict:
    """Score the test sets with the RM as saved and calibrated (so the evaluation sees what users load)."""
    section = recipe.reward
    scorer = RewardScorer(run.workdir, template=recipe.model.template, batch_size=section.train.micro_batch_size * 2,
                          device=default_device(), max_length=section.max_length, calibration=calibration)
    report = evaluate_scorer(scorer, test_sets, run.workdir, name=STAGE_NAMES[kind], seed=recipe.seed)
    return eval_summary(report)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    section = recipe.reward
    parent = registry.resolve(section.parent)
    data, test_sets = load_reward_data(section, recipe.seed)
    batch = OnPolicyBatch.from_recipe(registry, recipe, parent)
    # Without on-policy pairs the mixtures are known now. With them, the pairs come from sampling the policy,
    # which runs inside the first RM's stage (its time is that stage's): the batch's key stands in for them in
    # the input fingerprint, so unchanged inputs are recognised without sampling.
    static = mix_reward_data(data, section, recipe.seed)
    built: list[RMMixtures] = []

    def mixtures() -> RMMixtures:
        if batch is None:
            return static
        if not built:
            built.append(mix_reward_data(with_on_policy_pairs(data, registry, recipe, batch), section, recipe.seed))
        return built[0]

    def pairs_of(kind: str, mix: RMMixtures) -> tuple[list[Preference], dict]:
        train_pairs = getattr(mix, kind)
        stats = {**mix.manifest_entry(kind), "dropped_identical": data.dropped_identical}
        if not train_pairs:
            raise RecipeError(f"reward.{kind}.data: no training pairs for the {kind} reward model "
                              f"(mixture: {stats}); give it preference data")
        return train_pairs, stats

    test_fingerprints = {f"test_{name}": fingerprint(pairs) for name, pairs in test_sets.items()}
    versions = []
    for kind in KINDS:
        if batch is None:
            pairs_of(kind, static)  # an RM without data stops the stage before anything runs

        def body(run: StageRun, kind: str = kind) -> None:
            train_pairs, stats = pairs_of(kind, mixtures())
            run.metrics.update(train_reward_model(run, recipe, parent, kind, train_pairs, test_sets))
            run.extra["mixture"] = stats
            write_on_policy_pairs(run, train_pairs)
            run.extra["reward_model"] = {"kind": kind, "template": recipe.model.template,
                                         "max_length": section.max_length, "margin": section.margin,
                                         "lora_merged": section.train.lora.enabled}
            if "scale" in run.metrics.get("calibration", {}):  # what reward.scorer.load_scorer applies
                run.extra["reward_model"]["calibration"] = {k: run.metrics["calibration"][k] for k in ("scale", "bias")}

        fingerprints = {"train": fingerprint(getattr(static, kind)), **test_fingerprints,
                        **({"on_policy": batch.key} if batch is not None else {})}
        versions.append(run_stage(recipe, registry, STAGE_NAMES[kind], body,
                                  section=recipe.section(stage("reward").section), parents=[parent],
                                  data_fingerprints=fingerprints, force=force, resume=resume))
    return versions
