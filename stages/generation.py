"""Batched sampling engine for stages 3-6 and eval: K samples per prompt from any HF causal LM (vLLM optional),
and answering prompts given as conversations (``answer``).

The HF engine prefills each prompt once and shares its KV cache among its K samples, batches prompts
of similar length, drops finished rows as they end, and draws every sample from its own counter-based
random stream keyed by (seed, prompt key, sample index), so results do not depend on batching.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache

from data.records import Conversation
from data.runtime import progress_bar
from data.templates import render_prompt

# End-of-turn markers of common chat formats; each is a stop token when the tokenizer has it.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

_MASK64 = (1 << 64) - 1


@dataclass
class SamplingConfig:
    """How to sample; the defaults are plain ancestral sampling (Llama 2 rejection sampling varies temperature)."""

    num_samples: int = 1          # K completions per prompt
    temperature: float = 1.0      # softmax temperature; 0 = greedy
    top_p: float = 1.0            # nucleus mass kept, in (0, 1]; 1 = off
    max_new_tokens: int = 256     # tokens generated per completion at most, stop token included
    seed: int = 0                 # with the prompt key and sample index, fixes every sample
    batch_size: int = 32          # sequences per decoding forward pass (K samples of a prompt count K)
    return_logprobs: bool = False  # also return each token's log-probability (see Completion)
    # which distribution those log-probabilities are of: "model" = the unmodified model (log_softmax of the raw
    # logits), "sampling" = the one tokens were drawn from (logits / temperature, then top-p renormalised), which
    # is what a PPO ratio needs when temperature or top_p is not 1
    logprobs_of: str = "model"
    stop_token_ids: list[int] | None = None  # None = tokenizer eos + generation_config eos + end-of-turn token

    def __post_init__(self):
        checks = [
            (self.num_samples >= 1, "num_samples must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.logprobs_of in ("model", "sampling"), "logprobs_of must be 'model' or 'sampling'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingConfig: {message}; got {self}")


@dataclass
class Completion:
    """One sampled completion.

    `logprobs[t]` is log_softmax(raw model logits)[token_ids[t]]: the log-probability under the model
    itself, before temperature or top-p (SamplingConfig.logprobs_of "model"); with logprobs_of "sampling" it
    is ``token_logprobs(logits, token, temperature, top_p)``, the log-probability under the distribution the
    token was drawn from. At temperature 1 and top_p 1 the two are the same.
    """

    token_ids: list[int]
    text: str                      # decoded without special tokens
    finish_reason: str             # "stop" (ended with a stop token, included) or "length"
    logprobs: list[float] | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        return {"token_ids": self.token_ids, "text": self.text, "num_tokens": self.num_tokens,
                "finish_reason": self.finish_reason, "logprobs": self.logprobs}


def default_stop_token_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's eos, the model's generation_config eos ids, and any known end-of-turn token it has."""
    ids: list[int] = []

    def add(value):
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))

    add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        add(generation_config.eos_token_id)
    special = {added.content: token_id
               for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if added.special}
    add([special[token] for token in END_OF_TURN_TOKENS if token in special])
    if not ids:
        raise ValueError("no stop token: the tokenizer has no eos_token_id; set SamplingConfig.stop_token_ids")
    return ids


# ---------------------------------------------------------------------------------------------------------
# Random streams. SplitMix64 in exact Python integers: a sample's stream depends only on (seed, prompt key,
# sample index) and the step, never on the batch it runs in or the device, so a resumed or re-batched run
# draws the same uniforms. One uniform per token drives inverse-CDF sampling, which is exact.

def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_stream_key(seed: int, prompt_key: int, sample_index: int) -> int:
    """The 64-bit key of one sample's random stream."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ (prompt_key & _MASK64)) ^ (sample_index & _MASK64))


def _uniforms(stream_keys: list[int], step: int, device) -> torch.Tensor:
    """One float64 uniform in [0, 1) per stream for decoding step `step`."""
    values = [(_mix64(key ^ _mix64(step)) >> 11) * (1.0 / (1 << 53)) for key in stream_keys]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index i with probability weights[i] / sum(weights), per row; zero-weight entries are never picked."""
    cdf = weights.double().cumsum(-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp_(max=weights.shape[-1] - 1)


def _outside_nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask of the sorted entries outside the nucleus: the smallest set of most likely tokens whose mass reaches
    top_p (the top token always stays)."""
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    outside = mass_before >= top_p
    outside[..., 0] = False
    return outside


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Next tokens from float logits (rows, vocab): greedy at temperature 0, else temperature then top-p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return _inverse_cdf(probs, uniforms)
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
    nucleus = sorted_probs.masked_fill(_outside_nucleus(sorted_probs, top_p), 0.0)
    return sorted_ids.gather(-1, _inverse_cdf(nucleus, uniforms).unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   top_p: float = 1.0) -> torch.Tensor:
    """log p(token) under the distribution ``sample_tokens`` draws from: softmax(logits / temperature) restricted
    to the top-p nucleus and renormalised. Differentiable in ``logits`` (the nucleus itself is a constant), so
    PPO computes the new policy's log-probs with the same function as the behaviour policy's. Temperature 0
    (greedy) has no density: the unmodified model's log-probs are returned. Shapes: logits (..., vocab),
    tokens (...)."""
    scaled = logits.float() if temperature in (0, 1) else logits.float() / temperature
    if top_p < 1 and temperature > 0:
        with torch.no_grad():
            sorted_probs, sorted_ids = torch.softmax(scaled, dim=-1).sort(dim=-1, descending=True)
            outside = torch.zeros_like(scaled, dtype=torch.bool).scatter_(
                -1, sorted_ids, _outside_nucleus(sorted_probs, top_p))
        scaled = scaled.masked_fill(outside, float("-inf"))
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------
# The HF engine.

def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _forward(model, input_ids, attention_mask, position_ids, cache, last_only: bool) -> torch.Tensor:
    """Logits of the last position as float32 (rows, vocab); the cache is updated in place."""
    kwargs = {"logits_to_keep": 1} if last_only else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, **kwargs)
    return out.logits[:, -1, :].float()


def _cache_rows(cache, rows: torch.Tensor):
    """A new cache holding `rows` of `cache` (a row may repeat: that is how K samples share one prefill)."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)  # gathers fresh key/value tensors; `cache` itself is left as it was
    return selected


def _prompt_groups(prompts: Sequence[Sequence[int]], prompts_per_group: int) -> list[list[int]]:
    """Prompt indices sorted by length and cut into groups, so left padding within a group stays small."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    return [order[start:start + prompts_per_group] for start in range(0, len(order), prompts_per_group)]


def _prefill(model, prompts: list[Sequence[int]], pad_id: int, device, last_only: bool):
    """Encode left-padded prompts once; returns (cache, last logits, attention mask, next positions)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
    cache = DynamicCache(config=model.config)
    logits = _forward(model, input_ids, attention_mask, position_ids, cache, last_only)
    return cache, logits, attention_mask, attention_mask.sum(-1)


def _decode(model, cache, logits, attention_mask, positions, stream_keys: list[int], cfg: SamplingConfig,
            stop_ids: torch.Tensor):
    """Sample until every row stops or hits max_new_tokens, dropping finished rows from the batch.

    Returns per row (token ids, logprobs or None, finish reason), rows in input order.
    """
    rows = logits.shape[0]
    device = logits.device
    tokens_out = torch.zeros((rows, cfg.max_new_tokens), dtype=torch.long, device=device)
    logprobs_out = torch.zeros((rows, cfg.max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), cfg.max_new_tokens, dtype=torch.long, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    live = torch.arange(rows, device=device)  # which output row each batch row writes to
    live_keys = list(stream_keys)
    for step in range(cfg.max_new_tokens):
        uniforms = _uniforms(live_keys, step, device) if cfg.temperature > 0 else None
        tokens = sample_tokens(logits, cfg.temperature, cfg.top_p, uniforms)
        tokens_out[live, step] = tokens
        if cfg.return_logprobs:
            logprobs_out[live, step] = (token_logprobs(logits, tokens, cfg.temperature, cfg.top_p)
                                        if cfg.logprobs_of == "sampling"
                                        else torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))
        finished = torch.isin(tokens, stop_ids)
        if step == cfg.max_new_tokens - 1:
            stopped[live[finished]] = True
            break
        if finished.any():
            lengths[live[finished]] = step + 1
            stopped[live[finished]] = True
            keep = (~finished).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            # Finished rows leave the batch: the rest run on a smaller cache from here on.
            cache.batch_select_indices(keep)
            live, tokens, positions, attention_mask = live[keep], tokens[keep], positions[keep], attention_mask[keep]
            live_keys = [live_keys[i] for i in keep.tolist()]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=-1)
        logits = _forward(model, tokens[:, None], attention_mask, positions[:, None], cache, last_only=False)
        positions = positions + 1
    tokens_cpu, lengths_cpu = tokens_out.cpu(), lengths.tolist()
    logprobs_cpu = logprobs_out.cpu() if cfg.return_logprobs else None
    stopped_cpu = stopped.tolist()
    results = []
    for row in range(rows):
        n = lengths_cpu[row]
        results.append((tokens_cpu[row, :n].tolist(),
                        logprobs_cpu[row, :n].tolist() if logprobs_cpu is not None else None,
                        "stop" if stopped_cpu[row] else "length"))
    return results


def generate(model, tokenizer, prompts: Sequence[Sequence[int]], cfg: SamplingConfig,
             prompt_keys: Sequence[int] | None = None) -> list[list[Completion]]:
    """K = cfg.num_samples completions for each prompt (token ids), in prompt order, samples in index order.

    `prompt_keys` name each prompt's random stream (default: its position in `prompts`); pass global
    indices when generating a slice of a larger set, and the slice's samples equal the full run's.
    Same seed and keys give the same samples whatever batch_size or batch composition (on one device;
    kernels that differ by batch shape can in rare near-ties flip a token on GPUs).
    """
    prompts = [list(p) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token; got an empty prompt")
    keys = list(range(len(prompts))) if prompt_keys is None else [int(k) for k in prompt_keys]
    if len(keys) != len(prompts):
        raise ValueError(f"generate: {len(keys)} prompt_keys for {len(prompts)} prompts")
    device = next(model.parameters()).device
    stop_ids = torch.tensor(cfg.stop_token_ids if cfg.stop_token_ids is not None
                            else default_stop_token_ids(tokenizer, model), dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked, so any id works
    last_only = _accepts_logits_to_keep(model)
    K = cfg.num_samples
    results: list[list[Completion | None]] = [[None] * K for _ in prompts]
    was_training = model.training
    model.eval()
    bar = progress_bar(len(prompts) * K, "sampling", "sample")
    try:
        with torch.inference_mode():
            for group in _prompt_groups(prompts, max(1, cfg.batch_size // K)):
                cache, logits, attention_mask, positions = _prefill(
                    model, [prompts[i] for i in group], pad_id, device, last_only)
                # Decoding rows: (prompt's row in the group, sample index); chunks only when K > batch_size.
                rows = [(g, s) for g in range(len(group)) for s in range(K)]
                chunks = [rows[start:start + cfg.batch_size] for start in range(0, len(rows), cfg.batch_size)]
                for chunk in chunks:
                    source = torch.tensor([g for g, _ in chunk], dtype=torch.long, device=device)
                    # Repeat each prompt's prefill for its samples; with one chunk, in place to save memory.
                    if len(chunks) == 1:
                        cache.batch_select_indices(source)
                        chunk_cache = cache
                    else:
                        chunk_cache = _cache_rows(cache, source)
                    stream_keys = [sample_stream_key(cfg.seed, keys[group[g]], s) for g, s in chunk]
                    decoded = _decode(model, chunk_cache, logits[source], attention_mask[source], positions[source],
                                      stream_keys, cfg, stop_ids)
                    for (g, s), (token_ids, logprobs, reason) in zip(chunk, decoded):
                        text = tokenizer.decode(token_ids, skip_special_tokens=True)
                        results[group[g]][s] = Completion(token_ids, text, reason, logprobs)
                    bar.update(len(chunk))
                del cache
    finally:
        bar.close()
        model.train(was_training)
    return results


def answer(model, tokenizer, prompts: list[Conversation], template: str, max_new_tokens: int, batch_size: int,
           temperature: float = 0.0, seed: int = 0) -> list[str]:
    """One answer per prompt conversation, rendered with the recipe's chat template (greedy by default)."""
    ids = [render_prompt(tokenizer, p.messages, template).input_ids for p in prompts]
    cfg = SamplingConfig(num_samples=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                         batch_size=batch_size)
    return [samples[0].text for samples in generate(model, tokenizer, ids, cfg)]


class HFEngine:
    """The in-process engine: any transformers causal LM with a DynamicCache."""

    name = "hf"

    def generate(self, model, tokenizer, prompts, cfg: SamplingConfig, prompt_keys=None) -> list[list[Completion]]:
        return generate(model, tokenizer, prompts, cfg, prompt_keys)


class VLLMEngine:
    """vLLM (GPU only): `model` is a saved checkpoint path or a `vllm.LLM`.

    Logprobs are vLLM's default "raw_logprobs" (log_softmax of the unmodified logits), the same quantity as
    the HF engine's. Each prompt gets its own seed derived from (seed, prompt key), so samples are
    reproducible per prompt, though not equal to the HF engine's draws.
    """

    name = "vllm"

    def __init__(self):
        try:
            import vllm
        except ImportError as error:
            raise ImportError("backend='vllm' needs the vllm package (GPU only): pip install 'chatalign[gpu]', "
                              "or use backend='hf'") from error
        self._vllm = vllm
        self._llms: dict[str, object] = {}

    def _llm(self, model, seed: int):
        if isinstance(model, self._vllm.LLM):
            return model
        path = str(model)
        if path not in self._llms:
            self._llms[path] = self._vllm.LLM(model=path, seed=seed)
        return self._llms[path]

    def generate(self, model, tokenizer, prompts, cfg: SamplingConfig, prompt_keys=None) -> list[list[Completion]]:
        llm = self._llm(model, cfg.seed)
        keys = list(range(len(prompts))) if prompt_keys is None else list(prompt_keys)
        stop_ids = cfg.stop_token_ids if cfg.stop_token_ids is not None else default_stop_token_ids(tokenizer)
        params = [self._vllm.SamplingParams(
            n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
            seed=sample_stream_key(cfg.seed, key, 0) >> 33, stop_token_ids=stop_ids,
            logprobs=0 if cfg.return_logprobs else None, skip_special_tokens=True) for key in keys]
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        results = []
        for output in outputs:
            completions = []
            for sample in output.outputs:
                token_ids = list(sample.token_ids)
                logprobs = None
                if cfg.return_logprobs:
                    logprobs = [float(position[token].logprob) for position, token in zip(sample.logprobs, token_ids)]
                reason = "stop" if sample.finish_reason == "stop" else "length"
                completions.append(Completion(token_ids, sample.text, reason, logprobs))
            results.append(completions)
        return results


def get_engine(backend: str = "hf"):
    """The sampling engine named by a recipe's `generation.backend`: "hf" (default) or "vllm" (GPU)."""
    if backend == "hf":
        return HFEngine()
    if backend == "vllm":
        return VLLMEngine()
    raise ValueError(f"generation backend {backend!r} is unknown; expected 'hf' or 'vllm'")
