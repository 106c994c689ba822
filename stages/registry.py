"""Versioned stage checkpoints under runs/<recipe>/<stage>/v<N>/, with manifests, refs and lineage.

A version becomes visible only once complete: a stage works in a hidden `.work-*` directory, the
manifest is written last, and the directory is then renamed to v<N> in one atomic step.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"  # periodic training state inside a workdir; dropped at commit
WORKDIR_PREFIX = ".work-"
STATUS_COMPLETE = "complete"

# Libraries whose versions decide what a checkpoint contains; recorded where installed.
TRACKED_LIBRARIES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "deepspeed")

_VERSION_DIR = re.compile(r"^v(\d+)$")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HASH_CHUNK = 8 * 1024 * 1024


class RegistryError(LookupError):
    """A ref names nothing complete, or a recorded lineage no longer matches what is on disk."""


@dataclasses.dataclass(frozen=True)
class Version:
    """One complete checkpoint directory and its manifest."""

    stage: str
    number: int
    path: Path
    manifest: dict

    @property
    def id(self) -> str:
        return f"{self.stage}/v{self.number}"

    @property
    def ref(self) -> str:
        return f"{self.stage}@v{self.number}"

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def parents(self) -> list[dict]:
        return self.manifest.get("parents", [])


class Registry:
    """The versions of every stage of one recipe; root is runs/<recipe_name>."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def recipe_name(self) -> str:
        return self.root.name

    # ---------------------------------------------------------------- reading

    def stages(self) -> list[str]:
        """Stages that have at least one complete version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, stage: str) -> list[Version]:
        """Complete versions of a stage, oldest first."""
        _check_stage_name(stage)
        found = []
        for number, path in _version_dirs(self.root / stage):
            manifest = _read_manifest(path)
            if manifest is not None and manifest.get("status") == STATUS_COMPLETE:
                found.append(Version(stage, number, path, manifest))
        return found

    def latest(self, stage: str) -> Version | None:
        versions = self.versions(stage)
        return versions[-1] if versions else None

    def resolve(self, ref: str) -> Version:
        """"sft", "sft@latest", "sft@v2", "sft@2" or "sft/v2" -> that complete version."""
        stage, number = _parse_ref(ref)
        versions = self.versions(stage)
        if number is None and versions:
            return versions[-1]
        for version in versions:
            if version.number == number:
                return version
        raise RegistryError(self._not_found_message(ref, stage, versions))

    def _not_found_message(self, ref: str, stage: str, versions: list[Version]) -> str:
        where = f"registry {self.root}"
        if versions:
            have = ", ".join(f"v{v.number}" for v in versions)
            message = f"no complete version matches {ref!r} in {where}; {stage} has {have}."
        else:
            others = ", ".join(self.stages()) or "none"
            message = (f"no complete version of stage {stage!r} (ref {ref!r}) in {where}; "
                       f"stages with complete versions: {others}. Run the {stage} stage first.")
        incomplete = [f"v{n}" for n, path in _version_dirs(self.root / stage)
                      if not any(v.path == path for v in versions)]
        if incomplete:
            message += (f" Ignored as incomplete (no manifest.json with status 'complete'): "
                        f"{', '.join(incomplete)}.")
        return message

    # --------------------------------------------------------- reuse and work

    @staticmethod
    def inputs_fingerprint(parents: list[Version], recipe_section: dict,
                           data_fingerprints: dict, seed: Any) -> str:
        """sha256 of everything that decides a stage's output; equal fingerprints mean reuse."""
        payload = {
            "parents": [p.content_hash for p in parents],
            "recipe_section": recipe_section,
            "data_fingerprints": data_fingerprints,
            "seed": seed,
        }
        return _sha256_text(canonical_json(payload))

    def find_reusable(self, stage: str, fingerprint: str) -> Version | None:
        """The latest complete version built from exactly these inputs, if any."""
        for version in reversed(self.versions(stage)):
            if version.manifest.get("inputs_fingerprint") == fingerprint:
                return version
        return None

    def workdir(self, stage: str, fingerprint: str) -> Path:
        """The in-progress directory for these inputs; it survives a kill so a resume finds it."""
        _check_stage_name(stage)
        path = self.root / stage / f"{WORKDIR_PREFIX}{fingerprint[:16]}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---------------------------------------------------------------- writing

    def commit(self, stage: str, workdir: Path, parents: list[Version], recipe_section: dict,
               data_fingerprints: dict, seed: Any, metrics: dict, wall_time_s: float,
               extra: dict | None = None) -> Version:
        """Seal a finished workdir as the next version v<N> of the stage and return it."""
        _check_stage_name(stage)
        workdir = Path(workdir)
        stage_dir = self.root / stage
        if not workdir.is_dir():
            raise FileNotFoundError(f"cannot commit {stage}: workdir {workdir} does not exist")
        if workdir.resolve().parent != stage_dir.resolve() or _VERSION_DIR.match(workdir.name):
            raise ValueError(f"cannot commit {stage}: {workdir} is not a work directory of "
                             f"{stage_dir}; get one from Registry.workdir()")
        for parent in parents:
            if parent.path.parent.parent.resolve() != self.root.resolve():
                raise ValueError(f"cannot commit {stage}: parent {parent.id} lives in "
                                 f"{parent.path.parent.parent}, not in this registry {self.root}")
        extra = dict(extra or {})

        shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
        content_hash, files = hash_tree(workdir)
        manifest = {
            "id": None,
            "stage": stage,
            "version": None,
            "recipe": self.recipe_name,
            "parents": [{"id": p.id, "ref": p.ref, "stage": p.stage, "version": p.number,
                         "content_hash": p.content_hash} for p in parents],
            "recipe_section": recipe_section,
            "recipe_hash": _sha256_text(canonical_json(recipe_section)),
            "data_fingerprints": data_fingerprints,
            "inputs_fingerprint": self.inputs_fingerprint(parents, recipe_section,
                                                          data_fingerprints, seed),
            "seed": seed,
            "code_version": code_version(),
            "library_versions": library_versions(),
            "metrics": metrics,
            "wall_time_s": wall_time_s,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "status": STATUS_COMPLETE,
            "content_hash": content_hash,
            "files": files,
        }
        clashes = sorted(set(extra) & set(manifest))
        if clashes:
            raise ValueError(f"extra manifest keys {clashes} would overwrite registry fields")
        manifest.update(extra)

        number = max((n for n, _ in _version_dirs(stage_dir)), default=0) + 1
        while True:
            manifest["id"], manifest["version"] = f"{stage}/v{number}", number
            _write_json_atomic(workdir / MANIFEST, manifest)
            target = stage_dir / f"v{number}"
            try:
                if target.exists():  # os.rename would silently replace an empty directory
                    raise FileExistsError(target)
                os.rename(workdir, target)
            except OSError:
                if not target.exists():
                    raise
                number += 1  # another process took v<N> meanwhile
                continue
            _fsync_dir(stage_dir)
            return Version(stage, number, target, _read_manifest(target))

    # ---------------------------------------------------------------- lineage

    def lineage(self, ref: str) -> list[Version]:
        """The version and all its ancestors, depth first, each once; raises on a broken link."""
        chain = []
        for _, version, note in self._walk(self.resolve(ref)):
            if version is None:
                raise RegistryError(f"broken lineage of {ref!r}: {note}")
            if not note:
                chain.append(version)
        return chain

    def format_lineage(self, ref: str) -> str:
        """One line per ancestor, indented by depth; broken links are shown, not raised."""
        lines = []
        for depth, version, note in self._walk(self.resolve(ref)):
            indent = "  " * depth
            if version is None:
                lines.append(f"{indent}!! {note}")
            elif note:
                lines.append(f"{indent}{version.id}  ({note})")
            else:
                fields = [version.id, version.manifest.get("created_at", "?"),
                          version.content_hash[:12]]
                metrics = _format_metrics(version.manifest.get("metrics") or {})
                lines.append(indent + "  ".join(fields + ([metrics] if metrics else [])))
        return "\n".join(lines)

    def _walk(self, start: Version):
        """Yield (depth, version, note) depth first: note is None for a first visit, "shown above"
        for a repeat, and the problem (with version None) for a missing or replaced parent."""
        seen: set[str] = set()

        def visit(version: Version, depth: int):
            seen.add(version.id)
            yield depth, version, None
            for parent in version.parents:
                found = self._find_parent(parent)
                if found is None:
                    yield depth + 1, None, (
                        f"{version.id} names parent {parent['id']} (content "
                        f"{parent['content_hash'][:12]}), which is not a complete version in "
                        f"{self.root}")
                elif found.content_hash != parent["content_hash"]:
                    yield depth + 1, None, (
                        f"{version.id} was built from {parent['id']} with content hash "
                        f"{parent['content_hash'][:12]}, but {found.path} now records "
                        f"{found.content_hash[:12]}: the parent was replaced after its child was made")
                elif found.id in seen:
                    yield depth + 1, found, "shown above"
                else:
                    yield from visit(found, depth + 1)

        yield from visit(start, 0)

    def _find_parent(self, parent: dict) -> Version | None:
        for version in self.versions(parent["stage"]):
            if version.number == parent["version"]:
                return version
        return None


# -------------------------------------------------------------------- W&B

def log_artifact(version: Version, wandb_run: Any, upload: bool = False) -> Any:
    """Log a version as a W&B artifact with its parents as inputs; None when W&B is off.

    By default the artifact holds the manifest and a file:// reference to the checkpoint, so
    multi-GB weights are not copied; upload=True adds the files themselves.
    """
    if wandb_run is None or getattr(wandb_run, "disabled", False):
        return None
    try:
        import wandb
    except ImportError:
        return None
    recipe = version.manifest.get("recipe") or version.path.parent.parent.name
    registry = Registry(version.path.parent.parent)
    # Offline runs cannot declare inputs; the manifest metadata still names the parents.
    if not getattr(wandb_run, "offline", False):
        for parent in version.parents:
            found = registry._find_parent(parent)
            if found is not None:
                wandb_run.use_artifact(_build_artifact(wandb, found, recipe, upload=False))
    artifact = _build_artifact(wandb, version, recipe, upload)
    return wandb_run.log_artifact(artifact)


def _build_artifact(wandb: Any, version: Version, recipe: str, upload: bool) -> Any:
    # Same name and entries for the same version, so using a parent dedups to its logged version.
    artifact = wandb.Artifact(name=f"{recipe}-{version.stage}", type=version.stage,
                              metadata=version.manifest)
    if upload:
        artifact.add_dir(str(version.path))
    else:
        artifact.add_file(str(version.path / MANIFEST), name=MANIFEST)
        artifact.add_reference(version.path.resolve().as_uri(), name="checkpoint", checksum=False)
    return artifact


# -------------------------------------------------------------- helpers

def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_json_default)


def hash_tree(directory: Path) -> tuple[str, dict]:
    """Content hash of a directory: sha256 over (relative path, file sha256) of every file.

    manifest.json and checkpoints/ are left out. Files are read in chunks and fsynced, so a
    manifest never claims bytes that a power loss could still take back.
    """
    directory = Path(directory)
    files = {}
    for path in sorted(_files_under(directory), key=lambda p: p.relative_to(directory).as_posix()):
        relative = path.relative_to(directory).as_posix()
        digest, size = _hash_file(path)
        files[relative] = {"sha256": digest, "bytes": size}
    total = hashlib.sha256()
    for relative, entry in files.items():
        total.update(f"{relative}\0{entry['sha256']}\n".encode())
    return total.hexdigest(), files


def code_version() -> dict:
    """This package's version, and its git commit (with -dirty) when run from a checkout."""
    return {"package": _package_version(), "git": _git_commit()}


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _format_metrics(metrics: dict) -> str:
    """Top-level scalar metrics as "name=value", for one-line listings."""
    parts = []
    for name, value in sorted(metrics.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def _files_under(directory: Path):
    for dirpath, dirnames, filenames in os.walk(directory):
        here = Path(dirpath)
        if here == directory:
            dirnames[:] = [d for d in dirnames if d != CHECKPOINTS]
            filenames = [f for f in filenames if f != MANIFEST and not f.startswith(f".{MANIFEST}")]
        for name in filenames:
            yield here / name


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
            size += count
        _fsync(handle.fileno())
    return digest.hexdigest(), size


def _write_json_atomic(path: Path, value: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=False, ensure_ascii=False,
                  default=_json_default)
        handle.write("\n")
        handle.flush()
        _fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync; the rename is still atomic
        pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on every platform
        return
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _read_manifest(directory: Path) -> dict | None:
    try:
        with open(directory / MANIFEST, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _version_dirs(stage_dir: Path) -> list[tuple[int, Path]]:
    """Every v<N> directory of a stage, complete or not, by number."""
    if not stage_dir.is_dir():
        return []
    found = []
    for path in stage_dir.iterdir():
        match = _VERSION_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _parse_ref(ref: str) -> tuple[str, int | None]:
    """"sft" / "sft@latest" -> (sft, None); "sft@v2" / "sft@2" / "sft/v2" -> (sft, 2)."""
    if "@" in ref:
        stage, _, selector = ref.partition("@")
    elif "/" in ref:
        stage, _, selector = ref.partition("/")
    else:
        stage, selector = ref, "latest"
    stage, selector = stage.strip(), selector.strip()
    if not _STAGE_NAME.match(stage):
        raise RegistryError(f"bad ref {ref!r}: expected <stage>[@latest|@v<N>|@<N>], e.g. 'sft@latest'")
    if selector == "latest":
        return stage, None
    match = re.fullmatch(r"v?(\d+)", selector)
    if not match:
        raise RegistryError(f"bad version {selector!r} in ref {ref!r}: expected 'latest', 'v<N>' or '<N>'")
    return stage, int(match.group(1))


def _check_stage_name(stage: str) -> None:
    if not _STAGE_NAME.match(stage):
        raise ValueError(f"bad stage name {stage!r}: use letters, digits, '-', '_' or '.', "
                         f"starting with a letter or digit")


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return value.as_posix()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot record {type(value).__name__} {value!r} in a manifest: "
                    f"use JSON types (dict, list, str, number, bool, None)")


def _package_version() -> str:
    try:
        return importlib.metadata.version("chatalign")
    except importlib.metadata.PackageNotFoundError:
        pass
    # Running from a source tree that was never installed: read pyproject.toml beside it.
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        import tomllib

        with open(pyproject, "rb") as handle:
            project = tomllib.load(handle).get("project", {})
        if project.get("name") == "chatalign":
            return str(project.get("version", "unknown"))
    except (ImportError, OSError, ValueError):
        pass
    return "unknown"


def _git_commit() -> str | None:
    """HEAD of the checkout holding this code, "-dirty" if it has uncommitted changes."""
    source_root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source_root), *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != source_root:
            return None  # installed inside some other repository, not our checkout
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
