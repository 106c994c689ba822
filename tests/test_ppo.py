"""Stage 6, PPO: the formulas against hand-computed values, which log-probabilities are used where, the KL
reward against a separate forward pass, the truncation penalty, the LoRA reference, and the stage end to end
on the tiny recipe (kill with SIGKILL, --resume, same weights as an uninterrupted run)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data.records import Conversation
from reward.combine import RewardFunction
from stages.engine import TrainSettings
from stages.generation import SamplingConfig, generate, token_logprobs
from stages.ppo_loop import (KLController, Models, PPOLoop, ValueModel, collate_rollouts, gae, iteration_prompts,
                             policy_loss, value_loss)
from stages.recipe import CriticSection, LoraSection, OptimSection, PPOSection, RecipeError, TrainSection, \
    recipe_from_dict
from stages.tiny import build_tiny_model, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny.yaml")


# ---------------------------------------------------------------------------------------------------------
# Formulas

def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 7.0, 7.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [2.0, 9.0, 9.0]])  # 7s and 9s sit on padding and must not count
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards: δ2 = 2 - 1.5 = 0.5; δ1 = 0.9·1.5 - 1 = 0.35, A1 = 0.35 + 0.72·0.5 = 0.71;
    # δ0 = 1 + 0.9·1 - 0.5 = 1.4, A0 = 1.4 + 0.72·0.71 = 1.9112. Row 1 ends at once: A0 = 0.5 - 2 = -1.5.
    torch.testing.assert_close(advantages, torch.tensor([[1.9112, 0.71, 0.5], [-1.5, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[2.4112, 1.71, 2.0], [0.5, 0.0, 0.0]]))
    # γ = λ = 1 with a zero critic: the advantage is the sum of the rewards still to come
    advantages, _ = gae(rewards, torch.zeros_like(values), mask, 1.0, 1.0)
    torch.testing.assert_close(advantages, torch.tensor([[3.0, 2.0, 2.0], [0.5, 0.0, 0.0]]))


def test_the_clipped_objective_has_zero_gradient_outside_the_clip_range():
    old = torch.zeros(6)
    # ratios 1.5 (A>0: clipped), 0.5 (A<0: clipped), 1.1 (inside), 1.5 (A<0: the unclipped term is larger),
    # 0.5 (A>0: unclipped is larger), 0.9 (inside)
    ratios = torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5, 0.9])
    advantages = torch.tensor([1.0, -1.0, 2.0, -1.0, 1.0, -2.0])
    logprobs = ratios.log().clone().requires_grad_(True)
    loss, clipped = policy_loss(logprobs, old, advantages, torch.ones(6), clip=0.2)
    loss.backward()
    grad = logprobs.grad
    assert grad[0] == 0 and grad[1] == 0, "outside the clip range on the side it binds, the gradient is zero"
    # inside (and on the side that does not bind) d(-A·ρ)/d log π = -A·ρ
    torch.testing.assert_close(grad[2:], -advantages[2:] * ratios[2:])
    assert clipped == 2
    # max(-A·ρ, -A·clip(ρ)) per token: -1.2, 0.8, -2.2, 1.5, -0.5, 1.8
    assert float(loss.detach()) == pytest.approx(0.2, abs=1e-5)


def test_the_value_loss_is_clipped_around_the_rollout_value():
    old = torch.tensor([0.0, 0.0, 0.0])
    returns = torch.tensor([1.0, 1.0, -1.0])
    values = torch.tensor([0.5, 0.1, 0.5], requires_grad=True)
    loss = value_loss(values, old, returns, torch.ones(3), clip=0.2)
    # ½·max((v-R)², (v_clip-R)²): 0.5 -> clipped 0.2: max(0.25, 0.64) = 0.64; 0.1 inside: 0.81;
    # 0.5 -> 0.2 for R = -1: max(2.25, 1.44) = 2.25
    assert float(loss.detach()) == pytest.approx(0.5 * (0.64 + 0.81 + 2.25))
    loss.backward()
    assert values.grad[0] == 0  # the clipped term is taken: no gradient pushes the value further
    assert float(value_loss(values, old, returns, torch.ones(3), clip=0.0)) == pytest.approx(0.5 * (0.25 + 0.81 + 2.25))


def test_the_adaptive_kl_controller_moves_beta_towards_the_target_and_a_fixed_one_does_not():
    fixed = KLController(0.01)
    fixed.update(100.0, 512)
    assert fixed.beta == 0.01
    adaptive = KLController(0.01, adaptive=True, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # error clipped to +0.2: β·(1 + 0.2·100/1000)
    assert adaptive.beta == pytest.approx(0.01 * 1.02)
    adaptive.update(0.0, 100)
    assert adaptive.beta == pytest.approx(0.01 * 1.02 * 0.98)
    restored = KLController(0.5, adaptive=True)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.beta == adaptive.beta


def test_prompts_are_each_used_once_before_any_is_used_again():
    seen = [i for it in range(3) for i in iteration_prompts(10, 4, it, seed=1)][:10]
    assert sorted(seen) == list(range(10))
    assert iteration_prompts(10, 4, 2, seed=1) == iteration_prompts(10, 4, 2, seed=1)


def test_the_recipe_section_checks_its_batches():
    with pytest.raises(RecipeError, match="rollout_batch_size"):
        recipe_from_dict({"ppo": {"rollout_batch_size": 10, "train": {"batch_size": 4, "micro_batch_size": 2}}})
    with pytest.raises(RecipeError, match="max_steps"):
        recipe_from_dict({"ppo": {"train": {"max_steps": 3}}})
    section = PPOSection()
    assert (section.kl_coef, section.clip, section.train.optim.lr, section.train.optim.schedule) == \
        (0.01, 0.2, 1e-6, "constant")
    assert (section.train.optim.beta1, section.train.optim.beta2, section.train.optim.eps,
            section.train.optim.weight_decay, section.train.optim.grad_clip) == (0.9, 0.95, 1e-5, 0.1, 1.0)
    assert (section.temperature, section.top_p, section.rollout_batch_size, section.train.batch_size) == \
        (1.0, 1.0, 512, 64)


# ---------------------------------------------------------------------------------------------------------
# Log-probabilities: which distribution, where

@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_sampling_logprobs_are_of_the_distribution_sampled_from(tok):
    model = build_tiny_model(tok, seed=1)
    prompts = [tok.encode("hello there"), tok.encode("x")]
    raw = SamplingConfig(num_samples=2, temperature=0.7, top_p=0.9, max_new_tokens=8, return_logprobs=True, seed=5)
    sampling = dataclasses.replace(raw, logprobs_of="sampling")
    raw_out, sampling_out = generate(model, tok, prompts, raw), generate(model, tok, prompts, sampling)
    with torch.no_grad():
        for prompt, raw_c, samp_c in zip(prompts, raw_out, sampling_out):
            for a, b in zip(raw_c, samp_c):
                assert a.token_ids == b.token_ids  # the log-probs asked for never change the samples
                logits = model(torch.tensor([prompt + b.token_ids])).logits[0, len(prompt) - 1:-1]
                tokens = torch.tensor(b.token_ids)
                torch.testing.assert_close(torch.tensor(b.logprobs), token_logprobs(logits, tokens, 0.7, 0.9),
                                           atol=1e-4, rtol=0)
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.log_softmax(logits, -1).gather(
                    -1, tokens[:, None]).squeeze(-1), atol=1e-4, rtol=0)
                assert not torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs))
    # the sampling distribution sums to one over the nucleus and is zero outside it; at T = 1, p = 1 it is the model's
    logits = torch.randn(3, 1, 50).expand(-1, 50, -1)  # each row's 50 tokens under the same logits
    every = torch.arange(50).expand(3, -1)
    probs = token_logprobs(logits, every, 0.7, 0.5).exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert ((probs == 0).sum(-1) > 0).all()
    torch.testing.assert_close(token_logprobs(logits, every), torch.log_softmax(logits[:, 0], -1))


class LengthScorer:
    """A stand-in RM: helpful score from the answer's length, a fixed safety score."""

    def __init__(self, safety: bool = False):
        self.safety = safety

    def score(self, conversations, responses):
        return torch.tensor([2.0 if self.safety else len(r) / 10 for r in responses])


def make_loop(tmp_path, tok, lora: bool = False, **overrides) -> tuple[PPOLoop, object, object]:
    """A PPO loop on tiny random models: (loop, the starting policy, a separate copy of it)."""
    policy = build_tiny_model(tok, seed=2)
    reference = build_tiny_model(tok, seed=2)
    copy = build_tiny_model(tok, seed=2)
    if lora:
        from stages.finetune import with_lora

        policy = with_lora(policy, LoraSection(enabled=True, r=4, alpha=8, dropout=0.0), "CAUSAL_LM")
        reference = None
    from reward.model import reward_model_from_causal_lm

    critic = ValueModel(reward_model_from_causal_lm(build_tiny_model(tok, seed=3), tok.pad_token_id))
    train = TrainSection(epochs=1.0, batch_size=4, micro_batch_size=2, optim=OptimSection(lr=1e-3,
                                                                                         schedule="constant"))
    section = PPOSection(iterations=2, rollout_batch_size=4, max_new_tokens=6, batch_size=4, train=train,
                         critic=CriticSection(), **overrides)
    prompts = [Conversation(messages=[{"role": "user", "content": t}], meta={"is_safety": i == 1})
               for i, t in enumerate(["hi", "how do I pick a lock", "2+2?", "name a colour", "a poem"])]
    settings = TrainSettings.from_section(train, 0)
    loop = PPOLoop(Models(policy, reference, critic, tok), section, prompts, [], RewardFunction(
        LengthScorer(), LengthScorer(safety=True)), "model", 0, tmp_path, settings, settings)
    return loop, reference, copy


def response_logprobs(model, row, temperature=1.0, top_p=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([row.ids])).logits[0, row.prompt_len - 1:-1]
    return token_logprobs(logits, torch.tensor(row.ids[row.prompt_len:]), temperature, top_p)


def test_ratio_and_kl_log_probs_and_the_kl_reward_against_separate_forwards(tmp_path, tok):
    """T = 0.7, top_p = 0.9: the ratio's old log-probs are the sampling distribution's (as the engine returned
    them), the KL's are of logits / T without the top-p cut, for the policy and for a separately built π0; the
    per-token reward is -β·(log π_θ - log π_0), plus the whitened score on the last token."""
    loop, _, separate = make_loop(tmp_path, tok, temperature=0.7, top_p=0.9, kl_coef=0.5, truncation_penalty=None)
    with torch.no_grad():  # move the policy away from π0 so the KL term is not zero
        for p in loop.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = loop.rollouts(0)
    loop.score_forward(rows)
    loop.make_rewards(rows, 0)
    for j, row in enumerate(rows):
        torch.testing.assert_close(row.values["old_logprobs"], row.behaviour_logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(row.values["old_logprobs"], response_logprobs(loop.policy, row, 0.7, 0.9),
                                   atol=1e-5, rtol=0)
        policy_kl = response_logprobs(loop.policy, row, 0.7)
        reference_kl = response_logprobs(separate, row, 0.7)
        torch.testing.assert_close(row.values["kl_logprobs"], policy_kl, atol=1e-5, rtol=0)
        torch.testing.assert_close(row.values["ref_logprobs"], reference_kl, atol=1e-5, rtol=0)
        expected = -0.5 * (policy_kl - reference_kl)
        combined = 2.0 if loop.prompts[row.prompt_index].meta["is_safety"] else len(row.text) / 10
        expected[-1] += float((combined - loop.whitener.mean) / (loop.whitener.std + 1e-8))
        torch.testing.assert_close(row.values["rewards"], expected.float(), atol=1e-5, rtol=0)


def test_truncated_answers_get_the_penalty_instead_of_the_rm_score(tmp_path, tok):
    loop, _, _ = make_loop(tmp_path, tok, truncation_penalty=-3.0, kl_coef=0.0)
    rows = loop.rollouts(0)
    loop.score_forward(rows)
    for j, row in enumerate(rows):  # whatever the tiny model did, half the answers count as cut
        row.finish_reason = "length" if j % 2 else "stop"
    loop.make_rewards(rows, 0)
    kept = [len(r.text) / 10 if not loop.prompts[r.prompt_index].meta["is_safety"] else 2.0
            for j, r in enumerate(rows) if j % 2 == 0]
    assert loop.whitener.count == len(kept)  # cut answers never enter the whitening statistics
    for j, row in enumerate(rows):
        last = float(row.values["rewards"][-1])
        if j % 2:
            assert last == pytest.approx(-3.0)
        else:
            assert last == pytest.approx((kept[j // 2] - loop.whitener.mean) / (loop.whitener.std + 1e-8), abs=1e-5)
        assert (row.values["rewards"][:-1] == 0).all()


def test_the_lora_reference_is_the_starting_model_exactly(tmp_path, tok):
    loop, _, separate = make_loop(tmp_path, tok, lora=True)
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero, so perturb it
        for name, p in loop.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.1 * torch.randn_like(p))
    rows = loop.rollouts(0)
    batch = collate_rollouts(rows, loop.pad_id)
    with torch.no_grad():
        reference = loop.reference_logits(batch)
        from stages.ppo_loop import answer_logits

        assert not torch.allclose(answer_logits(loop.policy, batch), reference)
        torch.testing.assert_close(reference, answer_logits(separate, batch), atol=0, rtol=0)
    assert all(p.requires_grad == ("lora_" in n) for n, p in loop.policy.named_parameters())


def test_one_iteration_trains_both_models_and_the_ratio_starts_at_one(tmp_path, tok):
    loop, _, _ = make_loop(tmp_path, tok)
    rows = loop.rollouts(0)
    forward = loop.score_forward(rows)
    assert forward["behaviour_logprob_gap"] < 1e-4
    loop.make_rewards(rows, 0)
    before = {n: p.detach().clone() for n, p in loop.policy.named_parameters()}
    critic_before = {n: p.detach().clone() for n, p in loop.critic.named_parameters()}
    steps, update = loop.update(rows, 0, 0)
    assert steps == 1 and update["clip_fraction"] == 0  # one mini-batch: the first step's ratio is exactly 1
    assert update["approx_kl"] == pytest.approx(0, abs=1e-10)
    assert any(not torch.equal(before[n], p) for n, p in loop.policy.named_parameters())
    assert any(not torch.equal(critic_before[n], p) for n, p in loop.critic.named_parameters())


# ---------------------------------------------------------------------------------------------------------
# The stage end to end on the tiny recipe

PPO_FROM_SFT = ["ppo.policy=sft@latest"]  # PPO straight after SFT: the tests need not run rejection sampling


def run_cli_process(root: Path, *args: str) -> subprocess.Popen:
    sets = [x for o in [f"runs_dir={root}", *PPO_FROM_SFT] for x in ("--set", o)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages", *args, "--recipe", TINY, *sets], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def rms(tmp_path_factory) -> Path:
    """base, sft and both RMs of the tiny recipe, made once."""
    from stages.cli import main

    root = tmp_path_factory.mktemp("ppo-parents")
    assert main(["pipeline", "--until", "reward", "--recipe", TINY, "--set", f"runs_dir={root}"]) == 0
    return root


@pytest.mark.slow
def test_killed_ppo_resumes_to_the_weights_of_an_uninterrupted_run(rms, tmp_path):
    import shutil

    from stages.registry import Registry

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for root in (straight, killed):
        shutil.copytree(rms, root)

    proc = run_cli_process(straight, "stage", "ppo")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]

    proc = run_cli_process(killed, "stage", "ppo")
    work = killed / "tiny" / "ppo"
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob(".work-*/checkpoints/critic/step-2/trainer_state.json")):
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Registry(killed / "tiny").latest("ppo") is None

    proc = run_cli_process(killed, "stage", "ppo", "--resume")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    assert "resumed from step-" in out

    resumed, reference = Registry(killed / "tiny").resolve("ppo@latest"), Registry(straight / "tiny").resolve(
        "ppo@latest")
    for sub in ("model.safetensors", "critic/model.safetensors"):
        a, b = load_file(str(resumed.path / sub)), load_file(str(reference.path / sub))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=f"{sub}: {name}")
    hist_a, hist_b = resumed.manifest["metrics"]["history"], reference.manifest["metrics"]["history"]
    drop = ("rollout_s", "update_s", "tokens_per_s", "samples_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in hist_a] == \
        [{k: v for k, v in h.items() if k not in drop} for h in hist_b]

    # what the version holds: the policy, the critic beside it, the curves, the lineage
    files = {p.relative_to(reference.path).as_posix() for p in reference.path.rglob("*") if p.is_file()}
    assert {"model.safetensors", "critic/model.safetensors", "critic/config.json", "history.jsonl", "ppo.png",
            "heldout.jsonl", "eval.json"} <= files
    assert not any(f.startswith(("best/", "checkpoints/")) for f in files)
    assert [p["id"] for p in reference.manifest["parents"]] == ["sft/v1", "rm-helpful/v1", "rm-safety/v1"]
    metrics = reference.manifest["metrics"]
    assert metrics["iterations_run"] == 4 and metrics["optimizer_steps"] == 8
    for key in ("reward_mean", "helpful_mean", "safety_mean", "kl", "entropy", "answer_length", "clip_fraction",
                "value_loss", "explained_variance", "tokens_per_s"):
        assert key in metrics["history"][0]
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForCausalLM.from_pretrained(reference.path)
    AutoModelForSequenceClassification.from_pretrained(reference.path / "critic")


@pytest.mark.slow
def test_lora_ppo_commits_an_adapter_on_its_starting_policy_and_a_kl_blow_up_stops_the_run(rms, tmp_path, capsys):
    import shutil

    from stages.checkpoint import is_adapter, load_causal_lm
    from stages.cli import main
    from stages.registry import Registry

    root = tmp_path / "lora"
    shutil.copytree(rms, root)
    sets = [f"runs_dir={root}", *PPO_FROM_SFT, "ppo.train.lora.enabled=true", "ppo.iterations=2",
            "ppo.train.eval_every=1"]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["stage", "ppo", "--recipe", TINY, *args]) == 0
    version = Registry(root / "tiny").resolve("ppo@latest")
    assert is_adapter(version.path)
    assert json.loads((version.path / "base_ref.json").read_text())["id"] == "sft/v1"
    load_causal_lm(version.path, Registry(root / "tiny"))
    assert version.manifest["ppo"]["reference"] == "sft/v1 (adapter off)"

    capsys.readouterr()
    assert main(["stage", "ppo", "--recipe", TINY, *args, "--set", "ppo.kl_stop=1e-9", "--set",
                 "ppo.train.optim.lr=0.05", "--force"]) == 2
    err = capsys.readouterr().err
    assert "ppo: stopped at iteration" in err and "kl_stop" in err and "checkpoint" in err


# ---------------------------------------------------------------------------------------------------------
# Several processes (gloo on CPU): the first update equals one process's on the same global batch

# One update on the same global batch. Adam's first step is lr·sign(g) at the usual eps, so reduction-order noise in
# near-zero gradients flips whole ±lr steps; with eps = 1 the first step is ≈ lr·g, and the weights compare the
# gradients themselves.
ONE_UPDATE = ["ppo.iterations=1", "ppo.rollout_batch_size=4", "ppo.train.batch_size=4", "ppo.train.micro_batch_size=2",
              "ppo.heldout_prompts=[]", "ppo.train.optim.eps=1.0", "ppo.train.optim.lr=0.01",
              "ppo.critic.optim.eps=1.0"]


def launch_ppo(command: list[str], root: Path) -> None:
    sets = [x for o in [f"runs_dir={root}", *PPO_FROM_SFT, *ONE_UPDATE] for x in ("--set", o)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, "-m", "stages", "stage", "ppo", "--recipe", TINY, *sets], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def assert_same_update(root: Path, single: Path) -> None:
    """Weights that differ from the one-process run by a small share of what the update changed (a missing
    all-reduce, a wrong shard or a per-process loss scale moves them by tens of %)."""
    from stages.registry import Registry

    mine = load_file(str(Registry(root / "tiny").resolve("ppo@latest").path / "model.safetensors"))
    one = load_file(str(Registry(single / "tiny").resolve("ppo@latest").path / "model.safetensors"))
    start = load_file(str(Registry(single / "tiny").resolve("sft@latest").path / "model.safetensors"))
    drift = sum(float(((mine[n] - one[n]) ** 2).sum()) for n in one) ** 0.5
    update = sum(float(((one[n] - start[n]) ** 2).sum()) for n in one) ** 0.5
    assert update > 0 and drift < 0.05 * update, f"weights differ by {drift / update:.1%} of the update"
    a = Registry(root / "tiny").resolve("ppo@latest").manifest["metrics"]["history"][0]
    b = Registry(single / "tiny").resolve("ppo@latest").manifest["metrics"]["history"][0]
    for key in ("reward_mean", "kl", "answer_length", "value_loss", "policy_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key


@pytest.fixture(scope="module")
def single_update(rms, tmp_path_factory) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("ppo-one-process")
    shutil.copytree(rms, root, dirs_exist_ok=True)
    launch_ppo([sys.executable], root)
    return root


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_first_update_matches_one(rms, single_update, tmp_path):
    import shutil

    shutil.copytree(rms, tmp_path / "ddp")
    launch_ppo([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"], tmp_path / "ddp")
    assert_same_update(tmp_path / "ddp", single_update)


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_zero2_two_processes_first_update_matches_one(rms, single_update, tmp_path):
    import shutil

    pytest.importorskip("deepspeed")
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed")
    shutil.copytree(rms, tmp_path / "zero2")
    launch_ppo([str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu-zero2.yaml")],
               tmp_path / "zero2")
    assert_same_update(tmp_path / "zero2", single_update)
