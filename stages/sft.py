"""Stage 1: supervised fine-tuning on demonstrations (Llama 2 §3.1).

Answers only carry loss; examples are packed into full sequences with attention kept inside each
example; cosine schedule, lr 2e-5, weight decay 0.1, 2 epochs by default (``sft.train``). The
fine-tuning itself is the kit every SFT-like stage shares (stages/finetune.py).
"""
from __future__ import annotations

from data.runtime import is_main_process
from data.sources import fingerprint, load_conversations
from stages.catalogue import stage
from stages.checkpoint import load_causal_lm
from stages.common import StageRun, run_stage
from stages.finetune import fine_tune
from stages.recipe import Recipe
from stages.registry import Registry, Version
from stages.rollouts import oracle_eval


def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    section = recipe.sft
    parent = registry.resolve(section.parent)
    train = load_conversations(section.data, recipe.seed, "sft.data")
    heldout = load_conversations(section.heldout, recipe.seed, "sft.heldout")

    def body(run: StageRun) -> None:
        _, tokenizer, metrics = fine_tune(run, section.train, recipe.model.template, recipe.seed, parent, train,
                                          heldout, "sft", key="sft.train")
        run.metrics.update(metrics)
        if section.oracle_eval and is_main_process():
            # the checkpoint as saved: whole (the trained model may be sharded under ZeRO-3), LoRA merged
            merged = load_causal_lm(run.workdir, registry)
            run.metrics.update(oracle_eval(merged, tokenizer, recipe, n=section.oracle_eval,
                                           template=recipe.model.template))

    entry = stage("sft")
    fingerprints = {"train": fingerprint(train), "heldout": fingerprint(heldout)}
    return [run_stage(recipe, registry, entry.versions[0], body, section=recipe.section(entry.section),
                      parents=[parent], data_fingerprints=fingerprints, force=force, resume=resume)]
