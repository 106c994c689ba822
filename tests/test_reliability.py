"""Reliability (issue 10): the registry verifies what it serves, one writer per work directory, no
silent NaN, identical preference pairs, and every bad input a one-line error with exit code 2.

Each test reproduces one failure an adversarial user found; most use stand-in versions made through
the registry API and stage bodies that write a file, so they take well under a second. The ones that
need real training use the tiny recipe and are marked slow.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from data.records import DataError
from stages import registry as registry_module
from stages.cli import build_parser, main
from stages.common import StageError, open_registry, run_stage
from stages.recipe import describe, load_recipe
from stages.registry import IntegrityError, Registry, RegistryError, WorkdirBusy, WorkdirLock

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny.yaml")


# ------------------------------------------------------------------------------------ helpers

def cli(capsys, tmp_path: Path, *args: str, overrides: list[str] = ()) -> tuple[int, str, str]:
    sets = [x for o in [f"runs_dir={tmp_path}", *overrides] for x in ("--set", o)]
    capsys.readouterr()
    code = main([*args, "--recipe", TINY, *sets])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The CLI's stderr holds exactly one line, an error (logging goes to pytest's handlers here)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def tiny_registry(tmp_path: Path, overrides: list[str] = ()) -> tuple:
    recipe = load_recipe(TINY, [f"runs_dir={tmp_path}", *overrides])
    return recipe, open_registry(recipe)


def stand_in(registry: Registry, stage: str, parents=(), files: dict[str, bytes] | None = None):
    """A complete version holding the given files, committed through the registry's own API."""
    section = {"stand_in": stage}
    work = registry.workdir(stage, registry.inputs_fingerprint(list(parents), section, {}, 0))
    for name, data in (files or {"model.safetensors": b"weights " * 64, "config.json": b"{}"}).items():
        (work / name).write_bytes(data)
    return registry.commit(stage, work, list(parents), section, {}, 0, {}, 1.0)


def write_file(path: Path, body: bytes = b"trained weights " * 64):
    def body_fn(run):
        (run.workdir / path.name).write_bytes(body)
    return body_fn


def flip_byte(path: Path, offset: int = 7) -> bytes:
    original = path.read_bytes()
    changed = bytearray(original)
    changed[offset] ^= 0x01
    path.write_bytes(bytes(changed))
    return original


# ----------------------------------------------------------------------------------- integrity

def test_a_tampered_file_is_never_served_reused_or_trained_on(tmp_path, capsys):
    recipe, registry = tiny_registry(tmp_path)
    base = stand_in(registry, "base")
    sft = run_stage(recipe, registry, "sft", write_file(Path("model.safetensors")), section=recipe.section("sft"),
                    parents=[base], data_fingerprints={"train": "x"})
    weights = sft.path / "model.safetensors"
    stat = weights.stat()
    original = flip_byte(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its mtime put back

    with pytest.raises(IntegrityError) as served:
        registry.resolve("sft@latest")
    assert str(weights) in str(served.value) and "sft/v1" in str(served.value)
    with pytest.raises(IntegrityError):  # a rerun with unchanged inputs must not "reuse" it
        run_stage(recipe, registry, "sft", write_file(Path("model.safetensors")), section=recipe.section("sft"),
                  parents=[base], data_fingerprints={"train": "x"})
    trained = []
    with pytest.raises(IntegrityError):  # nor may a later stage train on it
        run_stage(recipe, registry, "rm-helpful", lambda run: trained.append(run), section=recipe.section("reward"),
                  parents=[sft], data_fingerprints={})
    assert trained == [] and registry.latest("rm-helpful") is None

    code, out, err = cli(capsys, tmp_path, "lineage", "sft@latest")
    assert code == 2 and "!! " in out and "model.safetensors" in one_error_line(err)
    code, out, err = cli(capsys, tmp_path, "verify", "sft@latest")
    assert code == 2 and "FAILED" in out and "ok base/v1" in out
    one_error_line(err)

    weights.write_bytes(original)  # restored: served, reused, and verified again
    assert registry.resolve("sft@latest") == sft
    again = run_stage(recipe, registry, "sft", write_file(Path("model.safetensors")), section=recipe.section("sft"),
                      parents=[base], data_fingerprints={"train": "x"})
    assert again.id == "sft/v1"
    assert cli(capsys, tmp_path, "lineage", "sft@latest")[0] == 0
    code, out, _ = cli(capsys, tmp_path, "verify")
    assert code == 0 and out.count("ok ") == 2


@pytest.mark.parametrize("damage, expected", [
    (lambda v: (v / "model.safetensors").write_bytes(b"\x00" * 8 + (v / "model.safetensors").read_bytes()[8:]),
     "sha256"),  # a corrupted safetensors header: same size, other bytes
    (lambda v: (v / "model.safetensors").write_bytes((v / "model.safetensors").read_bytes()[:-1]), "bytes"),
    (lambda v: (v / "model.safetensors").unlink(), "missing"),
    (lambda v: (v / "adapter_config.json").write_text("{}"), "not in the manifest"),
    (lambda v: (v / "manifest.json").write_text(json.dumps({**json.loads((v / "manifest.json").read_text()),
                                                             "files": {}})), "content_hash"),
])
def test_every_kind_of_damage_names_the_file_and_the_version(tmp_path, damage, expected):
    registry = Registry(tmp_path / "tiny")
    version = stand_in(registry, "sft")
    damage(version.path)
    with pytest.raises(IntegrityError, match=expected) as err:
        registry.resolve("sft")
    assert "sft/v1" in str(err.value) and str(version.path) in str(err.value)


def test_the_fast_check_hashes_only_files_whose_stat_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_module, "_RACY_NS", 0)  # files written just now count as settled
    registry = Registry(tmp_path / "tiny")
    version = stand_in(registry, "sft")
    hashed = []
    real_hash = registry_module._hash_file
    monkeypatch.setattr(registry_module, "_hash_file", lambda path, sync=True: hashed.append(path.name)
                        or real_hash(path, sync))
    registry.verify(version)
    assert hashed == []  # the commit's hashes were cached
    os.utime(version.path / "config.json")
    registry.verify(version)
    assert hashed == ["config.json"]
    registry.verify(version, full=True)
    assert sorted(hashed[1:]) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------------------------- lineage

def test_broken_lineage_exits_non_zero_and_its_orphans_are_refused_as_parents(tmp_path, capsys):
    recipe, registry = tiny_registry(tmp_path)
    base = stand_in(registry, "base")
    sft = stand_in(registry, "sft", parents=[base])
    shutil.rmtree(base.path)
    code, out, err = cli(capsys, tmp_path, "lineage", "sft@latest")
    assert code == 2 and "!! sft/v1 names parent base/v1" in out
    assert "broken lineage of sft@latest" in one_error_line(err)
    with pytest.raises(RegistryError, match="cannot use sft/v1 as a parent: its lineage is broken"):
        run_stage(recipe, registry, "rm-helpful", write_file(Path("model.safetensors")),
                  section=recipe.section("reward"), parents=[sft], data_fingerprints={})
    assert registry.latest("rm-helpful") is None


# -------------------------------------------------------------------------- one writer, and gc

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stages.registry import WorkdirLock
    lock = WorkdirLock.acquire(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(120)
""")


def hold_lock(workdir: Path) -> subprocess.Popen:
    """Another live process holding a work directory, as a running stage does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_gc_leaves_live_work_alone(tmp_path, capsys):
    recipe, registry = tiny_registry(tmp_path)
    base = stand_in(registry, "base")
    fingerprint = registry.inputs_fingerprint([base], recipe.section("sft"), {"train": "x"}, recipe.seed)
    live = registry.workdir("sft", fingerprint)
    (live / "checkpoints" / "step-4").mkdir(parents=True)
    (live / "checkpoints" / "step-4" / "trainer_state.json").write_text("{}")
    abandoned = registry.workdir("sft", "f" * 64)
    (abandoned / "model.safetensors").write_bytes(b"x" * 1000)
    committed = stand_in(registry, "rm-helpful")
    (committed.path / "checkpoints" / "step-2").mkdir(parents=True)  # killed right after the rename

    holder = hold_lock(live)
    try:
        with pytest.raises(WorkdirBusy, match=f"in use by process {holder.pid} "):
            run_stage(recipe, registry, "sft", write_file(Path("model.safetensors")), section=recipe.section("sft"),
                      parents=[base], data_fingerprints={"train": "x"})
        assert (live / "checkpoints" / "step-4" / "trainer_state.json").exists()  # not "discarded"

        code, out, _ = cli(capsys, tmp_path, "gc")
        assert code == 0
        assert f"kept {live}: in use by process {holder.pid}" in out
        assert f"removed {abandoned}" in out and not abandoned.exists()
        assert f"removed {committed.path / 'checkpoints'}" in out and not (committed.path / "checkpoints").exists()
        assert (live / "checkpoints" / "step-4").exists()
        assert registry.resolve("rm-helpful") == committed  # the version itself is untouched
    finally:
        holder.kill()
        holder.wait()
    # the OS dropped the dead holder's lock: the work can be resumed at once
    version = run_stage(recipe, registry, "sft", write_file(Path("model.safetensors")), section=recipe.section("sft"),
                        parents=[base], data_fingerprints={"train": "x"},
                        resume=True)
    assert version.id == "sft/v1" and not list(registry.root.glob("sft/.work-*"))


def test_a_lock_names_its_holder_and_is_gone_after_release(tmp_path):
    work = tmp_path / "stage" / ".work-abc"
    work.mkdir(parents=True)
    lock = WorkdirLock.acquire(work)
    holder = json.loads(lock.path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"]
    with pytest.raises(WorkdirBusy):  # a second open file description is refused, even in one process
        WorkdirLock.acquire(work)
    lock.release()
    assert not lock.path.exists()
    WorkdirLock.acquire(work).release()


def sft_process(runs: Path, *args: str) -> subprocess.Popen:
    # 640 unpacked steps (40 epochs of 16), a checkpoint after each: minutes, far longer than the second run needs
    # to start and be refused however fast the machine is (the test interrupts it long before it ends)
    sets = [x for o in [f"runs_dir={runs}", "sft.train.packing=false", "sft.train.checkpoint_every=1",
                        "sft.train.eval_every=640", "sft.train.epochs=40"]
            for x in ("--set", o)]
    # SIGINT back to its default in the child: under a non-interactive shell's `&` (a CI runner, nohup) the test
    # process inherits "ignore SIGINT", and Python then never turns Ctrl-C into KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "stages", "stage", "sft", *args, "--recipe", TINY, *sets],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
def test_two_runs_of_one_stage_then_ctrl_c(tmp_path):
    """Two real processes of `stage sft`: the second is refused without touching the first's work; the first,
    interrupted with Ctrl-C, says where to resume (test_a_kill_during_commit_... resumes such work)."""
    assert main(["stage", "base", "--recipe", TINY, "--set", f"runs_dir={tmp_path}"]) == 0
    first = sft_process(tmp_path)
    work = tmp_path / "tiny" / "sft"
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob(".work-*/checkpoints/step-*/trainer_state.json")):
        assert first.poll() is None, "the first run ended too soon:\n" + first.communicate()[1]
        time.sleep(0.1)
    second = sft_process(tmp_path)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2, err
    assert f"is in use by process {first.pid} " in err.strip().splitlines()[-1] and "Traceback" not in err
    assert "discarding unfinished work" not in err
    assert first.poll() is None  # still training, its checkpoints in place
    assert list(work.glob(".work-*/checkpoints/step-*/trainer_state.json"))

    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: sft interrupted") and "--resume" in last and ".work-" in last
    assert "Traceback" not in err
    assert Registry(tmp_path / "tiny").latest("sft") is None
    assert list(work.glob(".work-*/checkpoints/step-*/trainer_state.json"))  # kept for --resume
    assert not list(work.glob("*.lock"))  # released


FAST_SFT = ["sft.train.packing=false", "sft.data=[{source: builtin, n: 64}]", "sft.heldout=[{source: builtin, n: 8, "
            "split: heldout}]", "sft.train.max_steps=4", "sft.train.checkpoint_every=2", "sft.train.eval_every=4"]


@pytest.mark.slow
def test_a_kill_during_commit_resumes_from_the_last_checkpoint(tmp_path, capsys, caplog, monkeypatch):
    assert cli(capsys, tmp_path, "stage", "base")[0] == 0

    def killed(directory, *cache):
        raise KeyboardInterrupt  # what Ctrl-C or a kill looks like while the commit hashes a large model

    monkeypatch.setattr(registry_module, "hash_tree", killed)
    code, _, err = cli(capsys, tmp_path, "stage", "sft", overrides=FAST_SFT)
    assert code == 130
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted: sft interrupted") and "--resume" in line
    checkpoints = list((tmp_path / "tiny" / "sft").glob(".work-*/checkpoints/step-2/trainer_state.json"))
    assert checkpoints, "the training checkpoint must survive a kill during the commit"
    assert Registry(tmp_path / "tiny").latest("sft") is None

    monkeypatch.undo()
    caplog.set_level("INFO")
    assert cli(capsys, tmp_path, "stage", "sft", "--resume", overrides=FAST_SFT)[0] == 0
    assert "resumed from step-2 at step 2/4" in caplog.text
    version = Registry(tmp_path / "tiny").resolve("sft@latest")
    assert version.manifest["metrics"]["steps"] == 4 and not (version.path / "checkpoints").exists()


# ------------------------------------------------------------------------------- no silent NaN

def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    import torch

    from data.packing import collate
    from stages.engine import TrainSettings
    from stages.recipe import FineTuneSection
    from stages.tiny import build_tiny_model, build_tiny_tokenizer
    from stages.trainer import Trainer, causal_lm_loss

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=16)
    ids = tok("Hello there, general reader.")["input_ids"]
    examples = [{"input_ids": ids, "labels": ids, "units": len(ids) - 1} for _ in range(8)]
    calls = []

    def loss_going_nan(model, batch):  # finite for the first two steps, then NaN (one micro-batch per step)
        loss_sum, units, extra = causal_lm_loss(model, batch)
        calls.append(1)
        return (loss_sum * math.nan if len(calls) > 2 else loss_sum), units, extra

    settings = TrainSettings.from_section(FineTuneSection(batch_size=2, micro_batch_size=2, epochs=1.0,
                                                          checkpoint_every=1, eval_every=100), seed=0)
    trainer = Trainer(model, examples, [], lambda b: collate(b, tok.pad_token_id), settings, tmp_path,
                      loss_going_nan, desc="sft")
    with pytest.raises(StageError) as err:
        trainer.train()
    message = str(err.value)
    assert "non-finite training loss nan" in message and "optimizer step 3 of 4" in message
    assert "step-2" in message and "optim.lr" in message
    assert (tmp_path / "checkpoints" / "step-2" / "trainer_state.json").exists()
    assert not (tmp_path / "checkpoints" / "step-3").exists()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was never applied


@pytest.mark.parametrize("name, text", [
    ("pairs.jsonl", '{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "margin": NaN}\n'),
    ("pairs.jsonl", '{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "margin": Infinity}\n'),
    ("pairs.jsonl", '{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "margin": 1e999}\n'),
    ("pairs.csv", 'prompt,chosen,rejected,margin\nHi,Hello!,Go away.,nan\n'),
    ("pairs.jsonl", '{"prompt": "Hi", "chosen": "a", "rejected": "b", "score_chosen": NaN, "score_rejected": 1}\n'),
])
def test_a_non_finite_margin_or_score_is_a_data_error(tmp_path, name, text):
    from data.loaders import load_preferences

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=r"field '(margin|score_chosen)': expected a finite number") as err:
        load_preferences(path)
    assert str(path) in str(err.value)


def test_a_nan_margin_stops_the_reward_stage_with_one_line(tmp_path, capsys):
    _, registry = tiny_registry(tmp_path)
    stand_in(registry, "sft", parents=[stand_in(registry, "base")])
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}\n'
                    '{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "margin": NaN}\n')
    code, _, err = cli(capsys, tmp_path, "stage", "reward", overrides=[f"reward.helpful.data=[{{source: {data}}}]"])
    assert code == 2
    assert f"{data}, line 2, field 'margin': expected a finite number" in one_error_line(err)


# ------------------------------------------------------------------------ chosen == rejected

IDENTICAL = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
             {"prompt": "What is 2 + 3?", "chosen": "It is 5.", "rejected": " It is\n 5. "},
             {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Blue"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_identical_pairs_are_dropped_and_counted_or_refused(tmp_path):
    from data.sources import load_preferences
    from stages.recipe import DataSource

    sources = [DataSource(source=str(write_jsonl(tmp_path / "p.jsonl", IDENTICAL)))]
    dropped: dict[str, int] = {}
    kept = load_preferences(sources, 0, "reward.helpful.data", dropped=dropped)
    assert [p.chosen for p in kept] == ["4"] and dropped == {"reward.helpful.data[0]": 2}
    with pytest.raises(DataError, match=r"reward.helpful.data\[0\]: pair 2 of .*p.jsonl.* chosen == rejected"):
        load_preferences(sources, 0, "reward.helpful.data", identical="error")


def test_the_reward_manifest_counts_identical_pairs_and_a_whole_file_of_them_is_refused(tmp_path, capsys,
                                                                                      monkeypatch):
    import stages.reward_models

    _, registry = tiny_registry(tmp_path)
    stand_in(registry, "sft", parents=[stand_in(registry, "base")])

    def stand_in_training(run, recipe, parent, kind, train_pairs, test_sets):
        (run.workdir / "model.safetensors").write_bytes(b"rm")
        return {"pairs": len(train_pairs)}

    monkeypatch.setattr(stages.reward_models, "train_reward_model", stand_in_training)
    data = write_jsonl(tmp_path / "pairs.jsonl", IDENTICAL)
    assert cli(capsys, tmp_path, "stage", "reward", overrides=[f"reward.helpful.data=[{{source: {data}}}]"])[0] == 0
    manifest = registry.resolve("rm-helpful").manifest
    assert manifest["mixture"]["dropped_identical"] == {"reward.helpful.data[0]": 2}
    assert manifest["recipe_section"]["identical_pairs"] == "drop"

    same = write_jsonl(tmp_path / "same.jsonl", [IDENTICAL[2]] * 3)
    code, _, err = cli(capsys, tmp_path, "stage", "reward", overrides=[f"reward.helpful.data=[{{source: {same}}}]",
                                                                       "reward.safety.data=[]"])
    assert code == 2 and "no training pairs" in one_error_line(err)
    code, _, err = cli(capsys, tmp_path, "stage", "reward", overrides=[f"reward.helpful.data=[{{source: {data}}}]",
                                                                       "reward.identical_pairs=error"])
    assert code == 2 and "chosen == rejected" in one_error_line(err)


# --------------------------------------------------------------- every bad input: one line, exit 2

@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.json").write_bytes(b'[{"messages": [{"role": "user", "content": "caf\xe9"}]}]')
    (tmp_path / "bad.csv").write_bytes(b"prompt,completion\nHi,Hello\nHi,caf\xe9\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "a-file").write_text("not a directory")
    return tmp_path


@pytest.mark.parametrize("args, overrides, expected", [
    (["recipe", "validate"], ["sft.train.optim={lr: [}"],
     "override 'sft.train.optim={lr: [}': the value is not valid YAML"),
    (["pipeline", "--until", "bogus"], [], "--until: unknown stage 'bogus': expected one of base, sft"),
    (["stage", "sft"], ["sft.data=[{source: FILES/bad.json}]"], "bad.json, line 1: expected UTF-8 text"),
    (["stage", "sft"], ["sft.data=[{source: FILES/bad.csv}]"], "bad.csv, line 3: expected UTF-8 text"),
    (["stage", "sft"], ["sft.data=[{source: FILES/empty.jsonl}]"],
     "sft.data[0].source: 'FILES/empty.jsonl' gave no records"),
    (["stage", "base"], ["runs_dir=FILES/a-file"], "runs_dir: cannot create FILES/a-file/tiny"),
    (["stage", "base"], ["runs_dir=FILES/a-file/below"], "runs_dir: cannot create FILES/a-file/below/tiny"),
    (["stage", "base"], ["model.tiny.kv_heads=3"], "key 'model.tiny.kv_heads': must divide heads (4), got 3"),
    (["stage", "sft"], ["sft.train.optim.lr=.nan"], "key 'sft.train.optim.lr': expected a finite number, got nan"),
    (["stage", "sft"], ["sft.train.optim.lr=.inf"], "key 'sft.train.optim.lr': expected a finite number, got inf"),
    (["stage", "sft"], ["sft.train.epochs=0"], "key 'sft.train.epochs': must be > 0.0, got 0.0"),
    (["stage", "base"], ["name=../escaped"], "key 'name': expected a plain directory name"),
])
def test_each_bad_input_is_one_line_and_exit_2(files, capsys, args, overrides, expected):
    _, registry = tiny_registry(files)
    stand_in(registry, "base")
    overrides = [o.replace("FILES", str(files)) for o in overrides]
    code, _, err = cli(capsys, files, *args, overrides=overrides)
    assert code == 2
    assert expected.replace("FILES", str(files)) in one_error_line(err)
    assert not (files.parent / "escaped").exists()


@pytest.mark.parametrize("text, expected", [
    ("", "the recipe is empty"),
    ("# only a comment\n", "the recipe is empty"),
    ("name: x\nsft:\n  epochs: 1\n  epochs: 2\n", "line 4: not valid YAML: key 'epochs' appears twice in one mapping "
                                                  "(first on line 3)"),
    ("name: x\nsft: {epochs: 1, epochs: 2}\n", "key 'epochs' appears twice"),
    ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
])
def test_a_broken_recipe_file_is_one_line_and_exit_2(tmp_path, capsys, text, expected):
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    capsys.readouterr()
    assert main(["recipe", "validate", "--recipe", str(path)]) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_a_real_process_prints_one_line_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "stages", "pipeline", "--until", "bogus", "--recipe", TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --until: unknown stage 'bogus'")


def test_help_names_only_keys_that_exist():
    keys = {line.split(" ")[0].rstrip(":") for line in describe()}
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    texts = [parser.format_help()] + [p.format_help() for p in subparsers.values()]
    named = {m for text in texts for m in re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)=", text)}
    assert named and named <= keys, named - keys


def test_the_tiny_model_honours_the_seed(tmp_path, capsys):
    from safetensors.torch import load_file

    weights = {}
    for seed in (0, 1):
        assert cli(capsys, tmp_path / str(seed), "stage", "base", overrides=[f"seed={seed}"])[0] == 0
        weights[seed] = load_file(str(Registry(tmp_path / str(seed) / "tiny").resolve("base").path /
                                      "model.safetensors"))
    assert any(not weights[0][k].equal(weights[1][k]) for k in weights[0])
    assert cli(capsys, tmp_path / "again", "stage", "base")[0] == 0
    again = load_file(str(Registry(tmp_path / "again" / "tiny").resolve("base").path / "model.safetensors"))
    assert all(again[k].equal(weights[0][k]) for k in again)


# ------------------------------------------------------------------------------------- progress

class RecordingBar:
    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.done, self.closed = total, desc, unit, 0, False
        BARS.append(self)

    def update(self, n):
        self.done += n

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


BARS: list[RecordingBar] = []


def test_sampling_and_scoring_report_progress(monkeypatch):
    import reward.scorer
    import stages.generation
    from reward.model import reward_model_from_causal_lm
    from reward.scorer import RewardScorer
    from stages.generation import SamplingConfig, generate
    from stages.tiny import build_tiny_model, build_tiny_tokenizer

    BARS.clear()
    monkeypatch.setattr(stages.generation, "progress_bar", RecordingBar)
    monkeypatch.setattr(reward.scorer, "progress_bar", RecordingBar)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=16)
    prompts = [tok("Hi")["input_ids"], tok("Hello there")["input_ids"], tok("Hey")["input_ids"]]
    generate(model, tok, prompts, SamplingConfig(num_samples=2, max_new_tokens=3, batch_size=2))
    scorer = RewardScorer(reward_model_from_causal_lm(model, tok.pad_token_id), tok, batch_size=2, device="cpu")
    scorer.score([[{"role": "user", "content": "Hi"}]] * 5, ["a", "bb", "ccc", "dd", "e"])
    assert [(b.desc, b.unit, b.total, b.done, b.closed) for b in BARS] == [
        ("sampling", "sample", 6, 6, True), ("scoring", "answer", 5, 5, True)]


def test_progress_is_drawn_only_on_a_terminal_of_the_main_process(monkeypatch):
    from data.runtime import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not progress_bar(3, "sampling", "sample").disable
    monkeypatch.setenv("RANK", "1")
    assert progress_bar(3, "sampling", "sample").disable
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_bar(3, "sampling", "sample").disable
