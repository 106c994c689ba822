"""Stages 0 and 1 end to end on the tiny recipe: registry versions, reuse, LoRA, kill and resume."""
from __future__ import annotations

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

from stages.cli import main
from stages.recipe import load_recipe
from stages.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny.yaml")
# Unpacked, so the run has enough steps (32) to be killed part-way.
LONG = ["sft.train.packing=false", "sft.train.checkpoint_every=4", "sft.train.eval_every=8"]


def cli(tmp_path: Path, *args: str, overrides: list[str] = ()) -> int:
    sets = [x for o in [f"runs_dir={tmp_path}", *overrides] for x in ("--set", o)]
    return main([*args, "--recipe", TINY, *sets])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_base_and_sft_write_versions_with_lineage(tmp_path, capsys):
    assert cli(tmp_path, "stage", "base") == 0
    assert cli(tmp_path, "stage", "sft") == 0
    registry = Registry(tmp_path / "tiny")
    sft = registry.resolve("sft@latest")
    manifest = json.loads((sft.path / "manifest.json").read_text())
    base = registry.resolve("base@v1")
    assert manifest["parents"][0]["id"] == "base/v1"
    assert manifest["parents"][0]["content_hash"] == base.content_hash
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert manifest["recipe_section"] == load_recipe(TINY).section("sft")
    assert set(manifest["data_fingerprints"]) == {"train", "heldout"}
    metrics = manifest["metrics"]
    assert metrics["heldout_loss"] < metrics["initial_heldout_loss"]  # the tiny model does learn
    assert not (sft.path / "checkpoints").exists()
    # an ordinary HF checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(sft.path))
    assert AutoTokenizer.from_pretrained(str(sft.path)).pad_token_id != AutoTokenizer.from_pretrained(
        str(sft.path)).eos_token_id
    capsys.readouterr()
    assert cli(tmp_path, "lineage", "sft@latest") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sft/v1") and out[1].strip().startswith("base/v1")

    # unchanged inputs reuse the version; --force or a changed knob makes a new one
    assert cli(tmp_path, "stage", "sft") == 0
    assert [v.number for v in registry.versions("sft")] == [1]
    assert cli(tmp_path, "stage", "sft", overrides=["sft.train.optim.lr=5e-4"]) == 0
    assert [v.number for v in registry.versions("sft")] == [1, 2]
    assert cli(tmp_path, "stage", "sft", "--force", overrides=["sft.train.optim.lr=5e-4"]) == 0
    assert [v.number for v in registry.versions("sft")] == [1, 2, 3]


@pytest.mark.slow
def test_lora_sft_saves_adapter_with_base_reference(tmp_path):
    assert cli(tmp_path, "stage", "base") == 0
    assert cli(tmp_path, "stage", "sft", overrides=["sft.train.lora.enabled=true", "sft.train.lora.r=4",
                                                    "sft.train.optim.lr=1e-2"]) == 0
    registry = Registry(tmp_path / "tiny")
    sft = registry.resolve("sft@latest")
    assert (sft.path / "adapter_config.json").exists() and not (sft.path / "model.safetensors").exists()
    assert json.loads((sft.path / "base_ref.json").read_text())["id"] == "base/v1"
    from stages.checkpoint import load_causal_lm

    merged = load_causal_lm(sft.path, registry)
    base = load_causal_lm(registry.resolve("base@v1").path)
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert any("q_proj" in n for n in changed) and not any("norm" in n for n in changed)


@pytest.mark.slow
def test_top_layers_sft_changes_only_the_top_blocks(tmp_path):
    assert cli(tmp_path, "stage", "base") == 0
    assert cli(tmp_path, "stage", "sft", overrides=["sft.train.top_layers=1", "sft.train.optim.lr=1e-2"]) == 0
    registry = Registry(tmp_path / "tiny")
    trained, base = weights(registry.resolve("sft@latest").path), weights(registry.resolve("base@v1").path)
    changed = {n for n, p in trained.items() if not torch.equal(p, base[n])}
    top = max(int(n.split(".")[2]) for n in base if n.startswith("model.layers."))
    assert changed and all(n.startswith(f"model.layers.{top}.") or n in ("model.norm.weight", "lm_head.weight")
                           for n in changed), sorted(changed)
    assert "lm_head.weight" in changed and "model.embed_tokens.weight" not in changed  # the tiny head is untied


def test_top_layers_keeps_a_tied_output_head_frozen():
    from reward.model import freeze_below_top_layers
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    freeze_below_top_layers(model, 1, head="lm_head")
    assert not model.lm_head.weight.requires_grad
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is None  # nothing below the top block
    assert model.model.layers[2].self_attn.q_proj.weight.grad is not None


def test_recipe_refuses_top_layers_with_lora_in_fine_tuning():
    from stages.recipe import RecipeError

    with pytest.raises(RecipeError, match="top_layers.*exclude each other"):
        load_recipe(TINY, overrides=["sft.train.top_layers=1", "sft.train.lora.enabled=true"])


def test_replayed_demonstrations_join_a_fine_tuning_stages_data(tmp_path, capsys):
    """`train.replay` (rehearsal): the fine-tuning kit appends the replayed demonstrations to the stage's own
    examples, counts them in the manifest, and a bad source names its recipe key."""
    assert cli(tmp_path, "stage", "base") == 0
    steps = ["sft.train.max_steps=1", "sft.heldout=[{source: builtin, n: 2, split: heldout}]"]
    assert cli(tmp_path, "stage", "sft", overrides=steps) == 0
    replay = "sft.train.replay=[{source: builtin, n: 5, split: heldout}]"
    assert cli(tmp_path, "stage", "sft", overrides=[*steps, replay]) == 0
    registry = Registry(tmp_path / "tiny")
    plain, replayed = (registry.resolve(f"sft@v{i}").manifest["metrics"]["data"] for i in (1, 2))
    assert plain["replayed"] == 0 and replayed["replayed"] == 5
    assert replayed["train"]["total"] == plain["train"]["total"] + 5
    assert replayed["train"]["tokens"] > plain["train"]["tokens"]
    assert cli(tmp_path, "stage", "sft", overrides=[*steps, "sft.train.replay=[{source: builtin, n: 2, kinds: [toxic]}]"]) != 0
    assert "sft.train.replay[0]" in capsys.readouterr().err


def run_cli_process(tmp_path: Path, *args: str) -> subprocess.Popen:
    sets = [x for o in [f"runs_dir={tmp_path}", *LONG] for x in ("--set", o)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages", *args, "--recipe", TINY, *sets], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_stage_never_resolves_and_resume_matches_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    for root in (killed, straight):
        assert main(["stage", "base", "--recipe", TINY, "--set", f"runs_dir={root}"]) == 0

    # an uninterrupted run
    proc = run_cli_process(straight, "stage", "sft")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    # the same run killed (SIGKILL: no cleanup) right after its first training checkpoint
    proc = run_cli_process(killed, "stage", "sft")
    work = killed / "tiny" / "sft"
    deadline = time.time() + 240
    while time.time() < deadline and not list(work.glob(".work-*/checkpoints/step-*/trainer_state.json")):
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    registry = Registry(killed / "tiny")
    assert registry.latest("sft") is None
    with pytest.raises(LookupError):
        registry.resolve("sft@latest")

    # --resume continues from the checkpoint and ends where the uninterrupted run ended
    proc = run_cli_process(killed, "stage", "sft", "--resume")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "resumed from step-" in out
    resumed = registry.resolve("sft@latest")
    reference = Registry(straight / "tiny").resolve("sft@latest")
    a, b = weights(resumed.path), weights(reference.path)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    hist_a = json.loads((resumed.path / "manifest.json").read_text())["metrics"]["history"]
    hist_b = json.loads((reference.path / "manifest.json").read_text())["metrics"]["history"]
    assert [round(h["train_loss"], 6) for h in hist_a[1:]] == [round(h["train_loss"], 6) for h in hist_b[1:]]


def test_loss_ignores_prompt_positions():
    """Changing what the model predicts at a prompt position must not change the loss; at an answer position it must."""
    from data.packing import collate
    from data.templates import encode_conversation
    from stages.tiny import build_tiny_model, build_tiny_tokenizer
    from stages.trainer import causal_lm_loss

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    enc = encode_conversation(tok, [{"role": "user", "content": "What is 2 + 3?"},
                                    {"role": "assistant", "content": "2 + 3 = 5."}])
    batch = collate([{"input_ids": enc["input_ids"], "labels": enc["labels"]}], tok.pad_token_id)
    labels = batch["labels"][0]
    # logits at position t predict labels[t + 1]
    prompt_pos = [t for t in range(len(labels) - 1) if labels[t + 1] == -100]
    answer_pos = [t for t in range(len(labels) - 1) if labels[t + 1] != -100]
    assert prompt_pos and answer_pos

    class Perturbed(torch.nn.Module):
        def __init__(self, positions):
            super().__init__()
            self.positions = positions

        def forward(self, **inputs):
            out = model(**inputs)
            logits = out.logits.clone()
            logits[0, self.positions] += torch.randn_like(logits[0, self.positions]) * 10
            out.logits = logits
            return out

    with torch.no_grad():
        base_loss, units, _ = causal_lm_loss(model, batch)
        prompt_loss, _, _ = causal_lm_loss(Perturbed(prompt_pos), batch)
        answer_loss, _, _ = causal_lm_loss(Perturbed(answer_pos[:1]), batch)
    assert int(units) == len(answer_pos)
    assert torch.equal(base_loss, prompt_loss)
    assert not torch.allclose(base_loss, answer_loss)


def test_loss_with_the_head_on_trained_positions_only_equals_the_full_loss():
    """causal_lm_loss runs the output head only where some row's next token is trained: the loss and every
    gradient equal those of the plain cross-entropy over all logits, for rows of different lengths."""
    import torch.nn.functional as F

    from data.packing import collate
    from data.templates import encode_conversation
    from stages.engine import keeps_logits
    from stages.tiny import build_tiny_model, build_tiny_tokenizer
    from stages.trainer import causal_lm_loss

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    assert keeps_logits(model)
    rows = [encode_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for q, a in [("What is 2 + 3?", "2 + 3 = 5."), ("Name a colour, please, any colour at all.", "Blue.")]]
    batch = collate([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in rows], tok.pad_token_id)
    head_rows = []
    hook = model.lm_head.register_forward_hook(lambda m, inputs, out: head_rows.append(inputs[0].shape[1]))
    loss, units, _ = causal_lm_loss(model, batch)
    hook.remove()
    labels = batch["labels"][:, 1:]
    # the head ran exactly on the positions whose next token is trained in some row: fewer than all of them
    assert head_rows == [int((labels != -100).any(0).sum())] and head_rows[0] < batch["input_ids"].shape[1] - 1
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    assert int(units) == int((labels != -100).sum())
    torch.testing.assert_close(loss, expected)
    for g, e in zip(grads, expected_grads):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_base_writes_the_recipes_system_prompt_into_the_saved_template(tmp_path):
    """model.system_prompt: the saved tokenizer renders a conversation without a system message with the
    recipe's one (so every later stage, the evaluation and the server agree); template llama2 refuses it."""
    from transformers import AutoTokenizer

    assert cli(tmp_path, "stage", "base", overrides=["model.system_prompt=Be kind."]) == 0
    tok = AutoTokenizer.from_pretrained(Registry(tmp_path / "tiny").resolve("base@latest").path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert cli(tmp_path, "stage", "base", "--force", overrides=["model.system_prompt=Be kind.",
                                                                 "model.template=llama2"]) == 2


@pytest.mark.slow
def test_base_imports_a_local_hf_directory(tmp_path):
    """model.source local: any HF checkpoint directory becomes base/v1, loadable with from_pretrained."""
    from stages.tiny import build_tiny_model, build_tiny_tokenizer

    src = tmp_path / "hf-model"
    tok = build_tiny_tokenizer()
    build_tiny_model(tok, seed=3).save_pretrained(str(src))
    tok.save_pretrained(str(src))
    assert cli(tmp_path, "stage", "base", overrides=["model.source=local", f"model.path={src}"]) == 0
    base = Registry(tmp_path / "tiny").resolve("base@latest")
    a, b = weights(base.path), load_file(str(src / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert base.manifest["data_fingerprints"]["local"]
    # a missing directory is a clear recipe error, before any work
    assert cli(tmp_path, "stage", "base", "--force", overrides=["model.source=local",
                                                                 f"model.path={tmp_path / 'nope'}"]) == 2


def test_plan_steps_refuses_a_small_batch_that_cannot_split_over_processes():
    from stages.engine import TrainSettings
    from stages.recipe import RecipeError, TrainSection
    from stages.trainer import example_length, plan_steps

    settings = TrainSettings.from_section(TrainSection(epochs=2.0, batch_size=8, micro_batch_size=2), 0)
    assert plan_steps(100, settings, 2) == (2, 12, 24)
    assert plan_steps(4, settings, 2)[2] == 2  # 4 examples: 2 micro-batches, one per process
    with pytest.raises(RecipeError, match="evenly over 2 processes"):
        plan_steps(5, settings, 2)  # 3 micro-batches for 2 processes
    assert example_length({"chosen_ids": [1, 2, 3], "rejected_ids": [1]}) == 3
    assert example_length({"input_ids": [1, 2]}) == 2


def test_self_replay_trains_on_the_models_own_finished_answers_only(monkeypatch):
    """`train.self_replay`: the parent answers the prompts itself (greedy) before training; an answer cut at the
    length limit or empty is dropped (never trained with an end of turn after it), the rest join the data."""
    from types import SimpleNamespace

    from stages import finetune
    from stages.generation import Completion
    from stages.recipe import DataSource, FineTuneSection

    section = FineTuneSection(self_replay=[DataSource(source="builtin", n=3, split="heldout")],
                              self_replay_max_new_tokens=7)
    seen = {}

    def fake_generate(model, tokenizer, ids, cfg):
        seen["cfg"], seen["n"] = cfg, len(ids)
        return [[Completion([1], "Paris.", "stop")], [Completion([1, 2], "It was a long", "length")],
                [Completion([2], "  ", "stop")]]

    monkeypatch.setattr(finetune, "generate", fake_generate)
    monkeypatch.setattr(finetune, "render_prompt", lambda tok, messages, template: SimpleNamespace(input_ids=[0]))
    model = torch.nn.Linear(1, 1)
    kept, stats = finetune.self_replay(model, None, section, "model", 0, "sft.train.self_replay")
    assert seen["n"] == 3 and seen["cfg"].temperature == 0.0 and seen["cfg"].max_new_tokens == 7
    assert stats == {"prompts": 3, "kept": 1, "truncated": 1}
    (conversation,) = kept
    assert conversation.messages[-1] == {"role": "assistant", "content": "Paris."}
    assert conversation.messages[-2]["role"] == "user" and conversation.meta["self_replay"]
    assert model.training  # left as it was
