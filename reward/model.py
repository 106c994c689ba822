"""The reward model (Llama 2 §3.2.2): the chat checkpoint with its LM head replaced by a scalar head.

The RM is the architecture's own ``*ForSequenceClassification`` class with ``num_labels=1``, which
reads the score at the last non-pad token. A saved RM therefore loads and scores unchanged with
``AutoModelForSequenceClassification.from_pretrained(rm_dir)``, which is what TRL and OpenRLHF users
do. This module also turns preference pairs into token ids and gives the Trainer its collate and
loss functions: chosen and rejected answers of a micro-batch go through the model in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from data.records import Preference
from data.runtime import whole_model_init
from data.templates import render
from reward.loss import margins_for, ranking_loss, safety_auxiliary_loss

Messages = list[dict[str, str]]


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def reward_model_from_causal_lm(causal_lm: Any, pad_token_id: int | None = None, seed: int = 0) -> Any:
    """A ``*ForSequenceClassification`` (num_labels=1) with the causal LM's backbone weights.

    The score head is a fresh linear layer without bias, drawn from N(0, 1/(hidden+1)^2): at that
    scale the initial scores are close to 0, so the first steps are driven by the ranking signal and
    the margins rather than by a random offset between answers.
    """
    config = causal_lm.config.__class__.from_dict(causal_lm.config.to_dict())
    config.num_labels = 1
    config.problem_type = "regression"  # one real-valued score, not a one-class softmax
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    if getattr(config, "pad_token_id", None) is None:
        raise ValueError("the reward model needs config.pad_token_id to find the last real token of a padded "
                         "sequence; import the base model with stage 0, which sets a pad distinct from eos")
    dtype = next(causal_lm.parameters()).dtype
    with whole_model_init():
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.config.architectures = [type(model).__name__]
    backbone = getattr(model, model.base_model_prefix)
    source = getattr(causal_lm, causal_lm.base_model_prefix)
    missing, unexpected = backbone.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{type(causal_lm).__name__} -> {type(model).__name__}: backbone weights do not match "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear `score` head; reward models are built for "
                        "decoder architectures whose sequence-classification class has one (Llama, Mistral, Qwen, ...)")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=generator) / (head.in_features + 1)
        head.weight.copy_(weight.to(head.weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    return model


def freeze_below_top_layers(model: Any, top_layers: int, head: str = "score", knob: str = "reward.top_layers") -> int:
    """Freeze the embeddings and every transformer block except the top ``top_layers``; the final norm and the
    head (the attribute ``head``: a reward model's ``score``, a causal LM's ``lm_head``) stay trainable, except
    a head tied to the input embeddings, which stays frozen with them. Autograd then never goes below the lowest
    trainable block, so a step costs one forward plus the backward of the top blocks only. ``knob`` names the
    recipe setting in errors. Returns the trainable parameters."""
    backbone = getattr(model, model.base_model_prefix)
    blocks = getattr(backbone, "layers", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no `layers` list of transformer blocks; "
                        f"{knob} needs a decoder of the Llama family (set it to null)")
    if not 1 <= top_layers <= len(blocks):
        raise ValueError(f"{knob} is {top_layers} but the model has {len(blocks)} blocks; "
                         f"give 1..{len(blocks)}, or null to train all weights")
    for param in backbone.parameters():
        param.requires_grad_(False)
    for block in list(blocks)[len(blocks) - top_layers:]:
        for param in block.parameters():
            param.requires_grad_(True)
    for name in ("norm",):
        if getattr(backbone, name, None) is not None:
            for param in getattr(backbone, name).parameters():
                param.requires_grad_(True)
    embedding_ids = {id(p) for p in backbone.get_input_embeddings().parameters()} \
        if hasattr(backbone, "get_input_embeddings") else set()
    for param in getattr(model, head).parameters():
        # a tied head is the embedding matrix: training it would send gradients down through every block
        param.requires_grad_(id(param) not in embedding_ids)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_reward_model(causal_lm: str | Path | Any, pad_token_id: int | None = None, seed: int = 0) -> Any:
    """The RM initialized from a chat model: a loaded causal LM, or the directory of a full HF checkpoint
    (loaded whole, its pad token read from the tokenizer saved beside it).

    A LoRA chat checkpoint is merged into its base by whoever loads it (the pipeline loads registry
    versions with stages.checkpoint.load_causal_lm and passes the model here). Adapters for training
    the RM itself are added by the caller too (peft task SEQ_CLS keeps the new score head trainable).
    """
    if isinstance(causal_lm, (str, Path)):
        path = str(causal_lm)
        if pad_token_id is None:
            pad_token_id = AutoTokenizer.from_pretrained(path).pad_token_id
        with whole_model_init():
            causal_lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return reward_model_from_causal_lm(causal_lm, pad_token_id, seed)


def merged(model: Any) -> Any:
    """A LoRA-wrapped RM with its adapters merged (a plain model is returned as it is)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def encode_response(tokenizer: Any, prompt: Messages, response: str, template: str = "model",
                    max_length: int | None = None) -> tuple[list[int], bool]:
    """Token ids of ``prompt`` followed by ``response`` as the assistant's turn, and whether it was cut.

    The text is the chat template's full rendering (end-of-turn included), so it equals what a user of
    ``apply_chat_template`` feeds the saved RM. Longer than ``max_length``, the oldest tokens are
    dropped: the score is read at the end of the response, which must survive.
    """
    text, _ = render(tokenizer, list(prompt) + [{"role": "assistant", "content": response}], template)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids = ids[-max_length:]
    if ids and ids[-1] == tokenizer.pad_token_id:
        raise ValueError(f"the rendered conversation ends with the pad token {tokenizer.pad_token!r}, where the "
                         "score is read; give the tokenizer a pad token the chat template never emits")
    return ids, truncated


@dataclass
class EncodeStats:
    pairs: int = 0
    truncated_pairs: int = 0
    tokens: int = 0
    max_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"pairs": self.pairs, "truncated_pairs": self.truncated_pairs, "tokens": self.tokens,
                "max_tokens": self.max_tokens}


def encode_pairs(tokenizer: Any, pairs: Sequence[Preference], template: str = "model",
                 max_length: int | None = None) -> tuple[list[dict[str, Any]], EncodeStats]:
    """One Trainer example per pair: both token sequences plus what the loss needs (rating, margin, safety);
    a pair is one unit of the loss (``units``), which the trainer averages over."""
    examples, stats = [], EncodeStats()
    for pair in pairs:
        chosen_ids, cut_chosen = encode_response(tokenizer, pair.prompt, pair.chosen, template, max_length)
        rejected_ids, cut_rejected = encode_response(tokenizer, pair.prompt, pair.rejected, template, max_length)
        examples.append({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids, "rating": pair.rating,
                         "margin": pair.margin, "chosen_safe": pair.chosen_safe,
                         "rejected_safe": pair.rejected_safe, "units": 1})
        stats.pairs += 1
        stats.truncated_pairs += cut_chosen or cut_rejected
        stats.tokens += len(chosen_ids) + len(rejected_ids)
        stats.max_tokens = max(stats.max_tokens, len(chosen_ids), len(rejected_ids))
    return examples, stats


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded with ``pad_id`` to the longest sequence."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
    return input_ids, attention_mask


def _safe_label(value: bool | None) -> float:
    return float("nan") if value is None else float(bool(value))


def collate_pairs(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """B pairs -> one batch of 2B rows, chosen answers first then rejected, so one forward pass scores both."""
    sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    input_ids, attention_mask = pad_right(sequences, pad_id)
    safe = [_safe_label(e["chosen_safe"]) for e in examples] + [_safe_label(e["rejected_safe"]) for e in examples]
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "is_safe": torch.tensor(safe, dtype=torch.float32),
            "ratings": [e["rating"] for e in examples], "explicit_margins": [e["margin"] for e in examples]}


def pair_scores(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen_scores, rejected_scores) of a collated batch, from a single forward pass."""
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    scores = scores.squeeze(-1).float()
    n_pairs = scores.shape[0] // 2
    return scores[:n_pairs], scores[n_pairs:]


@dataclass
class PairLoss:
    """The Trainer's loss over one micro-batch of pairs: the margin ranking loss (summed over pairs), plus
    the safety auxiliary loss (its mean over labelled answers, weighted per pair) when ``aux_weight`` > 0.
    Extra sums: ``correct`` (pairs ranked right, so the held-out value is accuracy), and with the auxiliary
    loss on, ``ranking_loss`` and ``aux_loss``."""

    margin_table: str = "small"
    aux_weight: float = 0.0

    def __call__(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_scores(model, batch)
        margins = margins_for(batch["ratings"], batch["explicit_margins"], self.margin_table, device=chosen.device)
        ranking = ranking_loss(chosen, rejected, margins, reduction="sum")
        n_pairs = chosen.shape[0]
        loss = ranking
        extra = {"correct": float((chosen > rejected).sum())}
        if self.aux_weight > 0:
            extra["ranking_loss"] = float(ranking.detach())
            labels = batch["is_safe"].to(chosen.device)
            aux = safety_auxiliary_loss(torch.cat([chosen, rejected]), labels, self.aux_weight)
            loss = loss + aux * n_pairs
            extra["aux_loss"] = float(aux.detach()) * n_pairs
        return loss, torch.tensor(n_pairs, device=chosen.device), extra

