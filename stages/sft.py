"""Stage 1: supervised fine-tuning on demonstrations (Llama 2 §3.1).

Answers only carry loss; examples are packed into full sequences with attention kept inside each
example; cosine schedule, lr 2e-5, weight decay 0.1, 2 epochs by default. The same ``fine_tune``
serves rejection sampling, GAtt and context distillation, which are "fine-tuned similar to SFT".
"""
from __future__ import annotations

import logging
from typing import Any

from data.records import Conversation
from stages.common import StageRun, is_main_process, run_stage
from stages.recipe import Recipe, SFTSection
from stages.registry import Registry, Version

log = logging.getLogger("chatalign.sft")


def tokenize(conversations: list[Conversation], tokenizer: Any, template: str, train_on: str,
             max_length: int) -> tuple[list[dict], dict[str, Any]]:
    """Token ids and answer-only labels; reports examples cut by max_length or left with no answer."""
    from data.templates import encode_conversations

    examples, report = encode_conversations(tokenizer, conversations, template=template, train_on=train_on,
                                            max_length=max_length)
    if report.untrainable:
        log.warning("%d of %d examples have no answer token within %d tokens and are not trained on",
                    len(report.untrainable), report.total, max_length)
    return [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples], report.to_dict()


def prepare_examples(conversations: list[Conversation], tokenizer: Any, section: SFTSection, template: str,
                     seed: int) -> tuple[list[dict], dict[str, int]]:
    from data.packing import pack_examples

    examples, stats = tokenize(conversations, tokenizer, template, section.train_on, section.seq_len)
    stats["tokens"] = sum(len(e["input_ids"]) for e in examples)
    stats["trained_tokens"] = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)
    if section.packing:
        examples = pack_examples(examples, section.seq_len, shuffle_seed=seed)
    stats["sequences"] = len(examples)
    return examples, stats


def fine_tune(run: StageRun, recipe: Recipe, section: SFTSection, parent: Version, train: list[Conversation],
              heldout: list[Conversation], desc: str) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune the parent checkpoint on conversations and save the result into the run's workdir."""
    from data.packing import collate
    from stages.checkpoint import load_causal_lm, load_tokenizer, save_model
    from stages.trainer import Trainer, TrainSettings, causal_lm_loss

    tokenizer = load_tokenizer(parent.path)
    model = load_causal_lm(parent.path, run.registry)
    template = recipe.model.template
    train_examples, train_stats = prepare_examples(train, tokenizer, section, template, recipe.seed)
    heldout_examples, heldout_stats = prepare_examples(heldout, tokenizer, section, template, recipe.seed)
    if section.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = section.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    pad_id = tokenizer.pad_token_id
    trainer = Trainer(model, train_examples, heldout_examples, lambda b: collate(b, pad_id),
                      TrainSettings.from_section(section, recipe.seed), run.workdir, causal_lm_loss,
                      log_fn=lambda values, step: run.log({f"{desc}/{k}": v for k, v in values.items()}, step),
                      resume=run.resume, desc=desc)
    metrics = trainer.train()
    metrics["data"] = {"train": train_stats, "heldout": heldout_stats}
    plain, state_dict = trainer.unwrapped_state()
    if is_main_process():
        if section.lora.enabled:  # the adapter alone, with a reference to the checkpoint it applies to
            save_model(plain, tokenizer, run.workdir, base_version=parent)
        else:
            plain.save_pretrained(str(run.workdir), state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(str(run.workdir))
    return plain, tokenizer, metrics


def run(recipe: Recipe, registry: Registry, force: bool = False, resume: bool = False) -> Version:
    from data.sources import fingerprint, load_conversations

    section = recipe.sft
    parent = registry.resolve(section.parent)
    train = load_conversations(section.data, recipe.seed, "sft.data")
    heldout = load_conversations(section.heldout, recipe.seed, "sft.heldout")
    fingerprints = {"train": fingerprint(train), "heldout": fingerprint(heldout)}

    def body(run: StageRun) -> None:
        model, tokenizer, metrics = fine_tune(run, recipe, section, parent, train, heldout, "sft")
        run.metrics.update(metrics)
        if section.oracle_eval and is_main_process():
            from stages.checkpoint import load_causal_lm
            from eval.oracle import oracle_eval

            # the checkpoint as saved: whole (the trained model may be sharded under ZeRO-3), LoRA merged
            merged = load_causal_lm(run.workdir, registry)
            run.metrics.update(oracle_eval(merged, tokenizer, recipe, n=section.oracle_eval,
                                           template=recipe.model.template))

    return run_stage(recipe, registry, "sft", "sft", [parent], fingerprints, body, force, resume)
