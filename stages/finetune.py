"""The fine-tuning kit: conversations to answer-only token sequences (packed or not), and train-and-save of a
model, fully or with LoRA, on the supervised loop (stages/trainer.py).

SFT and rejection sampling (GAtt and context distillation next: all "fine-tuned similar to SFT") fine-tune a
causal LM with ``fine_tune``; the reward-model stage trains its pair model with ``train_and_save``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from peft import LoraConfig, get_peft_model

from data.packing import collate, pack_examples
from data.records import Conversation
from data.runtime import default_device, is_main_process
from data.sources import load_conversations, prompt_messages
from data.templates import count_targets, encode_conversations, render_prompt
from reward.model import freeze_below_top_layers
from stages.checkpoint import load_causal_lm, load_tokenizer, save_model
from stages.common import StageRun
from stages.engine import LossFn, TrainSettings
from stages.generation import SamplingConfig, generate
from stages.recipe import FineTuneSection, LoraSection, TrainSection
from stages.registry import Version
from stages.trainer import Trainer, causal_lm_loss

log = logging.getLogger("chatalign.finetune")


def tokenize(conversations: list[Conversation], tokenizer: Any, template: str, train_on: str,
             max_length: int) -> tuple[list[dict], dict[str, Any]]:
    """Token ids, answer-only labels and loss units (trained tokens); reports examples cut by max_length or
    left with no answer."""
    examples, report = encode_conversations(tokenizer, conversations, template=template, train_on=train_on,
                                            max_length=max_length)
    if report.untrainable:
        log.warning("%d of %d examples have no answer token within %d tokens and are not trained on",
                    len(report.untrainable), report.total, max_length)
    return [{"input_ids": e["input_ids"], "labels": e["labels"], "units": count_targets(e["labels"])}
            for e in examples], report.to_dict()


def prepare_examples(conversations: list[Conversation], tokenizer: Any, section: FineTuneSection, template: str,
                     seed: int) -> tuple[list[dict], dict[str, int]]:
    """Training examples of conversations (packed into ``seq_len`` sequences when the section packs) and their
    counts: examples, tokens, trained tokens, sequences."""
    examples, stats = tokenize(conversations, tokenizer, template, section.train_on, section.seq_len)
    stats["tokens"] = sum(len(e["input_ids"]) for e in examples)
    stats["trained_tokens"] = sum(e["units"] for e in examples)
    if section.packing:
        examples = pack_examples(examples, section.seq_len, shuffle_seed=seed)
    stats["sequences"] = len(examples)
    return examples, stats


def with_lora(model: Any, lora: LoraSection, task_type: str) -> Any:
    """``model`` with LoRA adapters on ``lora.target_modules`` and the rest frozen. task_type SEQ_CLS keeps a
    reward model's new score head fully trainable (peft's modules_to_save)."""
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type=task_type))


def train_and_save(run: StageRun, model: Any, tokenizer: Any, train_examples: list[dict],
                   heldout_examples: list[dict], collate_fn: Callable[[list[dict]], Any], section: TrainSection,
                   seed: int, loss_fn: LossFn, desc: str, *, task_type: str, adapter_base: Version | None = None,
                   final_eval: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` (with LoRA when the section says so) and save it with its tokenizer into the run's
    workdir on the main process; return the trained plain model and the loop's metrics.

    With LoRA, ``adapter_base`` set saves the adapter alone with a reference to that version (a fine-tuned
    policy); unset, the adapters are merged first, so the checkpoint loads without peft (a reward model).
    """
    if section.lora.enabled:
        model = with_lora(model, section.lora, task_type)
    trainer = Trainer(model, train_examples, heldout_examples, collate_fn, TrainSettings.from_section(section, seed),
                      run.workdir, loss_fn,
                      log_fn=lambda values, step: run.log({f"{desc}/{k}": v for k, v in values.items()}, step),
                      resume=run.resume, desc=desc, final_eval=final_eval)
    metrics = trainer.train()
    plain, state_dict = trainer.unwrapped_state()
    if is_main_process():
        if section.lora.enabled and adapter_base is not None:
            save_model(plain, tokenizer, run.workdir, base_version=adapter_base)
        else:
            if section.lora.enabled:
                plain = plain.merge_and_unload()
                plain.save_pretrained(str(run.workdir), safe_serialization=True)
            else:
                plain.save_pretrained(str(run.workdir), state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(str(run.workdir))
    return plain, metrics


def self_replay(model: Any, tokenizer: Any, section: FineTuneSection, template: str, seed: int,
                key: str) -> tuple[list[Conversation], dict[str, int]]:
    """The model's own greedy answers to ``section.self_replay`` prompts, as conversations to train on; answers
    cut at ``self_replay_max_new_tokens`` (or empty) are dropped, never trained with an end of turn after them."""
    prompts = [Conversation(messages=prompt_messages(c), meta=dict(c.meta))
               for c in load_conversations(section.self_replay, seed, key)]
    if not prompts:
        return [], {"prompts": 0, "kept": 0, "truncated": 0}
    ids = [render_prompt(tokenizer, p.messages, template).input_ids for p in prompts]
    cfg = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=section.self_replay_max_new_tokens,
                         seed=seed, batch_size=32)
    was_training = model.training
    model.eval()
    completions = [c[0] for c in generate(model.to(default_device()), tokenizer, ids, cfg)]
    model.train(was_training)
    kept = [Conversation(messages=[*p.messages, {"role": "assistant", "content": c.text.strip()}],
                         meta={**p.meta, "self_replay": True})
            for p, c in zip(prompts, completions) if c.finish_reason == "stop" and c.text.strip()]
    truncated = sum(c.finish_reason != "stop" for c in completions)
    return kept, {"prompts": len(prompts), "kept": len(kept), "truncated": truncated}


def fine_tune(run: StageRun, section: FineTuneSection, template: str, seed: int, parent: Version,
              train: list[Conversation], heldout: list[Conversation], desc: str, *,
              key: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune the causal LM ``parent`` on conversations and save the result into the run's workdir (a LoRA
    adapter names ``parent`` as its base): (trained model, tokenizer, metrics). The section's ``replay``
    demonstrations join ``train``; ``key`` names the section in the recipe for errors (default: ``desc.train``)."""
    key = key or f"{desc}.train"
    replay = load_conversations(section.replay, seed, f"{key}.replay") if section.replay else []
    if replay:
        log.info("%s: %d stage examples and %d replayed demonstrations", desc, len(train), len(replay))
        train = [*train, *replay]
    tokenizer = load_tokenizer(parent.path)
    model = load_causal_lm(parent.path, run.registry)
    anchors, anchor_stats = self_replay(model, tokenizer, section, template, seed, f"{key}.self_replay")
    if anchors:
        log.info("%s: %d of %d self-replay answers ended on their own and join the training data", desc,
                 len(anchors), anchor_stats["prompts"])
        train = [*train, *anchors]
    if section.top_layers is not None:
        trainable = freeze_below_top_layers(model, section.top_layers, head="lm_head", knob=f"{desc}: top_layers")
        log.info("%s: training the top %d blocks and the final norm: %.1fM of %.1fM weights", desc,
                 section.top_layers, trainable / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    train_examples, train_stats = prepare_examples(train, tokenizer, section, template, seed)
    heldout_examples, heldout_stats = prepare_examples(heldout, tokenizer, section, template, seed)
    pad_id = tokenizer.pad_token_id
    plain, metrics = train_and_save(run, model, tokenizer, train_examples, heldout_examples,
                                    lambda batch: collate(batch, pad_id), section, seed, causal_lm_loss, desc,
                                    task_type="CAUSAL_LM", adapter_base=parent)
    metrics["data"] = {"train": train_stats, "heldout": heldout_stats, "replayed": len(replay),
                       "self_replay": anchor_stats}
    return plain, tokenizer, metrics
