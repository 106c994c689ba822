"""Batched scoring with a trained reward model: what rejection sampling, PPO, evaluation and the HTTP
scoring API call. Scores are the RM's raw outputs (logits); σ(score) is the paper's R_s / R_h."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from data.records import Preference
from data.runtime import default_device, phase, progress_bar, whole_model_init
from reward.calibration import Platt
from reward.model import encode_response, pad_right

Messages = list[dict[str, str]]
# What the reward stage records in a version's manifest for its scorer (template, length cap).
MANIFEST_KEY = "reward_model"


class RewardScorer:
    """Scores (conversation, response) pairs with a sequence-classification RM.

    ``model_dir_or_model`` is a checkpoint directory (loaded with AutoModelForSequenceClassification)
    or a model object. Inputs are sorted by length and scored ``batch_size`` at a time, so padding
    stays small; the scores come back in input order as a float32 CPU tensor. With ``calibration``
    (reward.calibration.Platt) every score is ``scale * logit + bias``, the level σ(score) is read at.
    """

    def __init__(self, model_dir_or_model: str | Path | Any, tokenizer: Any = None, template: str = "model",
                 batch_size: int = 16, device: str | torch.device | None = None, max_length: int | None = None,
                 calibration: Platt | None = None):
        if isinstance(model_dir_or_model, (str, Path)):
            path = str(model_dir_or_model)
            with whole_model_init():
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        else:
            model = model_dir_or_model
        if tokenizer is None:
            raise ValueError("RewardScorer: pass the tokenizer together with a model object")
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer, self.template, self.batch_size, self.max_length = tokenizer, template, batch_size, max_length
        self.calibration = calibration
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id

    def encode(self, conversations: Sequence[Messages], responses: Sequence[str]) -> list[list[int]]:
        if len(conversations) != len(responses):
            raise ValueError(f"score: got {len(conversations)} conversations but {len(responses)} responses; "
                             "give one response per conversation")
        return [encode_response(self.tokenizer, conversation, response, self.template, self.max_length)[0]
                for conversation, response in zip(conversations, responses)]

    @torch.no_grad()
    @phase("scoring")
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Raw scores of token-id sequences, in input order."""
        scores = torch.empty(len(sequences), dtype=torch.float32)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        with progress_bar(len(sequences), "scoring", "answer") as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                input_ids, attention_mask = pad_right([sequences[i] for i in chunk], self.pad_id)
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention_mask.to(self.device), use_cache=False).logits
                scores[chunk] = logits.squeeze(-1).float().cpu()
                bar.update(len(chunk))
        return self.calibration(scores) if self.calibration is not None else scores

    def score(self, conversations: Sequence[Messages], responses: Sequence[str]) -> torch.Tensor:
        """Raw score of each response as the assistant's answer to its conversation (ending with a user turn)."""
        if not conversations:
            return torch.empty(0, dtype=torch.float32)
        return self.score_ids(self.encode(conversations, responses))

    def score_pairs(self, pairs: Sequence[Preference]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen_scores, rejected_scores) of preference pairs, scored together in one length-sorted pass."""
        prompts = [p.prompt for p in pairs]
        scores = self.score(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        return scores[:len(pairs)], scores[len(pairs):]


def load_scorer(version_path: str | Path, batch_size: int = 16, device: str | torch.device | None = None,
                template: str | None = None, calibrated: bool = True) -> RewardScorer:
    """A scorer for a saved RM directory (a registry version or any HF sequence-classification checkpoint).

    The chat template and length cap come from the version's manifest when it has one (what the RM
    was trained with), else ``template`` or "model" (the tokenizer's own chat template). So does the
    Platt calibration the reward stage fitted (the safety RM's), applied unless ``calibrated`` is False.
    """
    path = Path(version_path)
    recorded: dict[str, Any] = {}
    manifest = path / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get(MANIFEST_KEY, {}) or {}
    if device is None:
        device = default_device()
        device = "cuda" if torch.cuda.is_available() else "cpu"
    calibration = recorded.get("calibration") if calibrated else None
    return RewardScorer(path, template=template or recorded.get("template", "model"), batch_size=batch_size,
                        device=device, max_length=recorded.get("max_length"),
                        calibration=Platt.from_dict(calibration) if calibration else None)
