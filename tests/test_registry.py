"""Tests of the checkpoint registry: refs, atomic commits, reuse, content hashes, lineage, W&B."""

import datetime
import hashlib
import json
import os
import sys

import pytest

from stages import registry as registry_module
from stages.registry import Registry, RegistryError, Version, hash_tree
from stages.tracking import log_artifact

SECTION = {"lr": 2e-5, "epochs": 2, "max_seq_len": 4096}
DATA = {"sft": "data-fp-1"}


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "runs" / "tiny")


def make_version(reg, stage, parents=(), weights=b"weights", section=SECTION, data=DATA, seed=0,
                 metrics=None, extra=None):
    parents = list(parents)
    fingerprint = reg.inputs_fingerprint(parents, section, data, seed)
    work = reg.workdir(stage, fingerprint)
    (work / "model.safetensors").write_bytes(weights)
    (work / "tokenizer.json").write_text("{}")
    return reg.commit(stage, work, parents, section, data, seed,
                      metrics=metrics or {"loss": 1.25}, wall_time_s=3.5, extra=extra)


# ------------------------------------------------------------------ commit and resolve

def test_commit_writes_manifest_and_resolves_every_ref_form(reg):
    work = reg.workdir("sft", "ab" * 32)
    (work / "model.safetensors").write_bytes(b"w" * 100)
    (work / "checkpoints" / "step-10").mkdir(parents=True)
    (work / "checkpoints" / "step-10" / "optimizer.pt").write_bytes(b"state")
    version = reg.commit("sft", work, [], SECTION, DATA, 7, {"loss": 0.5}, 12.0,
                         extra={"samples": 3})

    assert not work.exists()
    assert version.path == reg.root / "sft" / "v1"
    assert not (version.path / "checkpoints").exists()
    assert (version.id, version.ref) == ("sft/v1", "sft@v1")
    on_disk = json.loads((version.path / "manifest.json").read_text())
    assert on_disk == version.manifest
    for key in ("id", "stage", "version", "recipe", "parents", "recipe_section", "recipe_hash",
                "data_fingerprints", "inputs_fingerprint", "seed", "code_version",
                "library_versions", "metrics", "wall_time_s", "created_at", "status",
                "content_hash"):
        assert key in on_disk, key
    assert on_disk["id"] == "sft/v1" and on_disk["version"] == 1 and on_disk["recipe"] == "tiny"
    assert on_disk["status"] == "complete" and on_disk["samples"] == 3
    assert on_disk["inputs_fingerprint"] == reg.inputs_fingerprint([], SECTION, DATA, 7)
    assert on_disk["code_version"]["package"]
    assert on_disk["library_versions"]["python"]
    assert datetime.datetime.fromisoformat(on_disk["created_at"]).utcoffset().total_seconds() == 0
    assert list(on_disk["files"]) == ["model.safetensors"]

    for ref in ("sft", "sft@latest", "sft@v1", "sft@1", "sft/v1", " sft @ v1 "):
        assert reg.resolve(ref) == version


def test_version_numbers_increase_and_skip_incomplete_directories(reg):
    numbers = [make_version(reg, "sft", weights=bytes([i])).number for i in range(3)]
    assert numbers == [1, 2, 3]
    assert [v.number for v in reg.versions("sft")] == [1, 2, 3]
    (reg.root / "sft" / "v4").mkdir()  # a leftover partial directory keeps its number
    assert make_version(reg, "sft", weights=b"x").number == 5
    assert reg.latest("sft").number == 5
    assert reg.resolve("sft@v3").number == 3
    assert reg.latest("rm-helpful") is None and reg.versions("rm-helpful") == []


def test_commit_takes_next_number_when_target_appears_meanwhile(reg, monkeypatch):
    make_version(reg, "sft")
    real_rename = os.rename

    def racing_rename(source, target):
        # Another process commits v2 between our choice of N and our rename.
        if str(target).endswith("v2"):
            (reg.root / "sft" / "v2").mkdir(exist_ok=True)
            (reg.root / "sft" / "v2" / "other").write_text("x")
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", racing_rename)
    version = make_version(reg, "sft", weights=b"second")
    assert version.number == 3 and version.manifest["id"] == "sft/v3"
    assert json.loads((reg.root / "sft" / "v3" / "manifest.json").read_text())["version"] == 3


def test_commit_rejects_foreign_workdir_and_clashing_extra(reg, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(ValueError, match="not a work directory"):
        reg.commit("sft", elsewhere, [], SECTION, DATA, 0, {}, 1.0)
    work = reg.workdir("sft", "0" * 64)
    with pytest.raises(ValueError, match="content_hash"):
        reg.commit("sft", work, [], SECTION, DATA, 0, {}, 1.0, extra={"content_hash": "x"})
    foreign = make_version(Registry(tmp_path / "runs" / "other"), "base")
    with pytest.raises(ValueError, match="not in this registry"):
        reg.commit("sft", work, [foreign], SECTION, DATA, 0, {}, 1.0)
    with pytest.raises(ValueError, match="bad stage name"):
        reg.workdir("sft/v1", "0" * 64)


# ------------------------------------------------------------------------- atomicity

def test_workdir_without_commit_never_resolves(reg):
    previous = make_version(reg, "sft")
    work = reg.workdir("sft", "cd" * 32)
    assert work.name == ".work-" + "cd" * 8
    (work / "model.safetensors").write_bytes(b"half-trained")
    (work / "checkpoints").mkdir()
    # Even a complete-looking manifest (killed between manifest write and rename) is not a version.
    (work / "manifest.json").write_text(json.dumps({"status": "complete", "content_hash": "x"}))
    assert reg.resolve("sft@latest") == previous
    assert reg.versions("sft") == [previous]
    assert reg.workdir("sft", "cd" * 32) == work and (work / "model.safetensors").exists()


@pytest.mark.parametrize("manifest", [None, "{not json", json.dumps({"status": "running"}),
                                      json.dumps(["complete"])])
def test_version_directory_without_complete_manifest_is_ignored(reg, manifest):
    previous = make_version(reg, "sft")
    partial = reg.root / "sft" / "v2"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    if manifest is not None:
        (partial / "manifest.json").write_text(manifest)
    assert reg.latest("sft") == previous
    assert reg.resolve("sft") == previous
    with pytest.raises(RegistryError, match="v2"):
        reg.resolve("sft@v2")


def test_kill_during_content_hash_leaves_latest_and_workdir(reg, monkeypatch):
    previous = make_version(reg, "sft")
    fingerprint = reg.inputs_fingerprint([], SECTION, DATA, 1)
    work = reg.workdir("sft", fingerprint)
    (work / "model.safetensors").write_bytes(b"new weights")

    def killed(directory, *cache):
        raise KeyboardInterrupt("killed while hashing")

    monkeypatch.setattr(registry_module, "hash_tree", killed)
    with pytest.raises(KeyboardInterrupt):
        reg.commit("sft", work, [], SECTION, DATA, 1, {}, 1.0)
    assert reg.latest("sft") == previous
    assert not (reg.root / "sft" / "v2").exists()
    assert (work / "model.safetensors").exists()  # resumable

    monkeypatch.undo()
    assert reg.commit("sft", work, [], SECTION, DATA, 1, {}, 1.0).number == 2


def test_kill_during_rename_leaves_latest(reg, monkeypatch):
    previous = make_version(reg, "sft")
    work = reg.workdir("sft", "ef" * 32)
    (work / "model.safetensors").write_bytes(b"new weights")

    def killed(source, target):
        raise KeyboardInterrupt("killed before rename")

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        reg.commit("sft", work, [], SECTION, DATA, 1, {}, 1.0)
    monkeypatch.undo()
    assert (work / "manifest.json").exists()
    assert reg.latest("sft") == previous


# ---------------------------------------------------------------------------- errors

def test_resolve_errors_name_the_ref_and_what_exists(reg):
    make_version(reg, "sft")
    make_version(reg, "sft", weights=b"2")
    with pytest.raises(RegistryError) as missing_version:
        reg.resolve("sft@v9")
    assert "'sft@v9'" in str(missing_version.value) and "v1, v2" in str(missing_version.value)
    with pytest.raises(RegistryError) as missing_stage:
        reg.resolve("ppo@latest")
    message = str(missing_stage.value)
    assert "'ppo'" in message and "sft" in message and str(reg.root) in message
    with pytest.raises(RegistryError, match="expected 'latest'"):
        reg.resolve("sft@newest")
    with pytest.raises(RegistryError, match="bad ref"):
        reg.resolve("@v1")
    with pytest.raises(RegistryError, match="stages with complete versions: none"):
        Registry(reg.root.parent / "empty").resolve("sft")


# ------------------------------------------------------------------- reuse and hashes

def test_find_reusable_matches_only_identical_inputs(reg):
    base = make_version(reg, "base")
    other_base = make_version(reg, "base", weights=b"other")
    first = make_version(reg, "sft", parents=[base])
    second = make_version(reg, "sft", parents=[base])  # forced rerun with the same inputs
    fingerprint = reg.inputs_fingerprint([base], SECTION, DATA, 0)
    assert reg.find_reusable("sft", fingerprint) == second != first
    reordered = dict(reversed(list(SECTION.items())))
    assert reg.inputs_fingerprint([base], reordered, DATA, 0) == fingerprint
    changed = [
        reg.inputs_fingerprint([other_base], SECTION, DATA, 0),
        reg.inputs_fingerprint([], SECTION, DATA, 0),
        reg.inputs_fingerprint([base], {**SECTION, "lr": 1e-5}, DATA, 0),
        reg.inputs_fingerprint([base], SECTION, {"sft": "data-fp-2"}, 0),
        reg.inputs_fingerprint([base], SECTION, DATA, 1),
    ]
    assert fingerprint not in changed and len(set(changed)) == len(changed)
    for other in changed:
        assert reg.find_reusable("sft", other) is None
    assert reg.find_reusable("rm-helpful", fingerprint) is None


def test_content_hash_follows_bytes_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_module, "_HASH_CHUNK", 7)  # force many chunks
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    weights = bytes(range(256)) * 40
    (tree / "sub" / "model.safetensors").write_bytes(weights)
    (tree / "manifest.json").write_text("ignored")
    original, files = hash_tree(tree)
    assert files == {"sub/model.safetensors": {"sha256": hashlib.sha256(weights).hexdigest(),
                                               "bytes": len(weights)}}

    (tree / "manifest.json").write_text("still ignored")
    (tree / "checkpoints").mkdir()
    (tree / "checkpoints" / "optimizer.pt").write_bytes(b"ignored too")
    assert hash_tree(tree)[0] == original

    flipped = bytearray(weights)
    flipped[1234] ^= 1
    (tree / "sub" / "model.safetensors").write_bytes(bytes(flipped))
    assert hash_tree(tree)[0] != original
    (tree / "sub" / "model.safetensors").write_bytes(weights)
    assert hash_tree(tree)[0] == original
    (tree / "sub" / "model.safetensors").rename(tree / "sub" / "renamed.safetensors")
    assert hash_tree(tree)[0] != original


def test_committed_content_hash_changes_with_weight_bytes(reg):
    one = make_version(reg, "sft", weights=b"\x00\x01\x02")
    same = make_version(reg, "sft", weights=b"\x00\x01\x02")
    changed = make_version(reg, "sft", weights=b"\x00\x01\x03")
    assert one.content_hash == same.content_hash != changed.content_hash


def test_code_version_survives_missing_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert registry_module.code_version()["git"] is None
    assert registry_module.code_version()["package"]


# --------------------------------------------------------------------------- lineage

@pytest.fixture
def pipeline(reg):
    base = make_version(reg, "base", metrics={"params": 1000})
    sft = make_version(reg, "sft", parents=[base], metrics={"loss": 1.23456})
    helpful = make_version(reg, "rm-helpful", parents=[sft], metrics={"accuracy": 0.6})
    safety = make_version(reg, "rm-safety", parents=[sft], metrics={"accuracy": 0.7})
    ppo = make_version(reg, "ppo", parents=[sft, helpful, safety],
                       metrics={"reward": 0.25, "curve": [1, 2]})
    return {"base": base, "sft": sft, "helpful": helpful, "safety": safety, "ppo": ppo}


def test_lineage_is_depth_first_without_duplicates(reg, pipeline):
    chain = reg.lineage("ppo@latest")
    assert [v.id for v in chain] == ["ppo/v1", "sft/v1", "base/v1", "rm-helpful/v1",
                                     "rm-safety/v1"]
    assert [v.id for v in reg.lineage("rm-safety")] == ["rm-safety/v1", "sft/v1", "base/v1"]
    assert reg.lineage("base") == [pipeline["base"]]
    assert pipeline["ppo"].parents[1] == {
        "id": "rm-helpful/v1", "ref": "rm-helpful@v1", "stage": "rm-helpful", "version": 1,
        "content_hash": pipeline["helpful"].content_hash}


def test_format_lineage_indents_by_depth(reg, pipeline):
    lines = reg.format_lineage("ppo").splitlines()
    assert lines[0].startswith("ppo/v1  ") and "reward=0.25" in lines[0] and "curve" not in lines[0]
    assert pipeline["ppo"].content_hash[:12] in lines[0]
    assert pipeline["ppo"].manifest["created_at"] in lines[0]
    assert lines[1].startswith("  sft/v1  ") and "loss=1.235" in lines[1]
    assert lines[2].startswith("    base/v1  ") and "params=1000" in lines[2]
    assert lines[3].startswith("  rm-helpful/v1  ")
    assert lines[4] == "    sft/v1  (shown above)"
    assert lines[5].startswith("  rm-safety/v1  ")
    assert len(lines) == 7


def test_lineage_reports_replaced_or_missing_parent(reg, pipeline):
    manifest_path = pipeline["sft"].path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["content_hash"] = "f" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RegistryError) as mismatch:
        reg.lineage("rm-helpful")
    message = str(mismatch.value)
    assert "rm-helpful/v1" in message and "sft/v1" in message
    assert pipeline["sft"].content_hash[:12] in message and "ffffffffffff" in message
    assert "!! rm-helpful/v1 was built from sft/v1" in reg.format_lineage("rm-helpful")

    manifest_path.unlink()
    with pytest.raises(RegistryError, match="not a complete version"):
        reg.lineage("ppo")


# ------------------------------------------------------------------------------ W&B

class FakeRun:
    def __init__(self, offline=False, disabled=False):
        self.offline, self.disabled, self.calls = offline, disabled, []

    def use_artifact(self, artifact):
        self.calls.append(("use", artifact.name, artifact.type))
        return artifact

    def log_artifact(self, artifact):
        self.calls.append(("log", artifact.name, artifact.type, artifact.metadata))
        return artifact


def test_log_artifact_declares_parents_as_inputs(reg, pipeline):
    pytest.importorskip("wandb")
    run = FakeRun()
    log_artifact(pipeline["ppo"], run)
    assert run.calls[:3] == [("use", "tiny-sft", "sft"), ("use", "tiny-rm-helpful", "rm-helpful"),
                             ("use", "tiny-rm-safety", "rm-safety")]
    assert run.calls[3][:3] == ("log", "tiny-ppo", "ppo")
    assert run.calls[3][3]["content_hash"] == pipeline["ppo"].content_hash

    offline = FakeRun(offline=True)
    log_artifact(pipeline["ppo"], offline)
    assert [call[0] for call in offline.calls] == ["log"]


def test_log_artifact_is_a_no_op_without_wandb(reg, pipeline, monkeypatch):
    assert log_artifact(pipeline["sft"], None) is None
    disabled = FakeRun(disabled=True)
    assert log_artifact(pipeline["sft"], disabled) is None and disabled.calls == []
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    run = FakeRun()
    assert log_artifact(pipeline["sft"], run) is None and run.calls == []


def test_log_artifact_with_offline_wandb(reg, pipeline, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="chatalign-test", dir=str(tmp_path), mode="offline")
    try:
        artifact = log_artifact(pipeline["helpful"], run)
        assert artifact.name.startswith("tiny-rm-helpful") and artifact.type == "rm-helpful"
        assert artifact.metadata["content_hash"] == pipeline["helpful"].content_hash
        assert "manifest.json" in artifact.manifest.entries
    finally:
        run.finish()
        wandb.teardown()
