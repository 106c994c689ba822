"""Versioned stage checkpoints under runs/<recipe>/<stage>/v<N>/, with manifests, refs and lineage.

A version becomes visible only once complete: a stage works in a hidden `.work-*` directory, the
manifest is written last, and the directory is then renamed to v<N> in one atomic step. What the
registry serves is checked against its manifest first (sizes and sha256 of every file, re-hashed
only when a file's stat changed), and one process at a time writes a work directory (an OS lock).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

from data.records import canonical_json, json_default

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"  # periodic training state inside a workdir; dropped once the version is in place
WORKDIR_PREFIX = ".work-"
LOCK_SUFFIX = ".lock"  # beside a workdir (not inside: the workdir is renamed at commit), holds the owner
VERIFY_CACHE = ".verified.json"  # inside a version: stat and sha256 of each file when last hashed
STATUS_COMPLETE = "complete"
# A file changed within this long before it was hashed could change again within the same timestamp
# tick without its stat showing it, so such a cache entry is not trusted (git's "racy clean" rule).
_RACY_NS = 1_000_000_000

# Libraries whose versions decide what a checkpoint contains; recorded where installed.
TRACKED_LIBRARIES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "deepspeed")

_VERSION_DIR = re.compile(r"^v(\d+)$")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HASH_CHUNK = 8 * 1024 * 1024


class RegistryError(LookupError):
    """A ref names nothing complete, or a recorded lineage no longer matches what is on disk."""


class IntegrityError(RegistryError):
    """A version's files differ from what its manifest records (changed, missing, or added)."""


class WorkdirBusy(RegistryError):
    """Another live process holds the lock of a stage's work directory."""


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
        # dot folders (.cache: results derived from a version, e.g. GAtt's "before" evaluation) are no stage
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and self.versions(p.name))

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

    def resolve(self, ref: str, verify: bool = True) -> Version:
        """"sft", "sft@latest", "sft@v2", "sft@2" or "sft/v2" -> that complete version.

        With ``verify`` (the default) its files are checked against its manifest first (see verify),
        so a changed or corrupted checkpoint is never handed out.
        """
        stage, number = _parse_ref(ref)
        versions = self.versions(stage)
        found = versions[-1] if number is None and versions else None
        found = found or next((v for v in versions if v.number == number), None)
        if found is None:
            raise RegistryError(self._not_found_message(ref, stage, versions))
        if verify:
            self.verify(found)
        return found

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
        """The latest complete version built from exactly these inputs, if any; its files are verified
        first, so a changed checkpoint is an error rather than something silently reused."""
        for version in reversed(self.versions(stage)):
            if version.manifest.get("inputs_fingerprint") == fingerprint:
                self.verify(version)
                return version
        return None

    def workdir(self, stage: str, fingerprint: str) -> Path:
        """The in-progress directory for these inputs; it survives a kill so a resume finds it."""
        _check_stage_name(stage)
        path = self.root / stage / f"{WORKDIR_PREFIX}{fingerprint[:16]}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check_writable(self) -> None:
        """Create the registry root, or say in one line why runs_dir cannot hold it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RegistryError(f"runs_dir: cannot create {self.root} ({err.strerror}); expected a directory "
                                f"this process can write: set runs_dir in the recipe or with --set runs_dir=DIR") from err
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RegistryError(f"runs_dir: {self.root} is not writable by this process; set runs_dir in the "
                                f"recipe or with --set runs_dir=DIR")

    def lock_workdir(self, workdir: Path) -> "WorkdirLock":
        """Hold ``workdir`` for this process (see WorkdirLock); a second holder is refused."""
        return WorkdirLock.acquire(Path(workdir))

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

        # The training checkpoints stay until the version is in place: a kill while hashing or
        # renaming (minutes for a large model) then resumes from the last of them, not from step 0.
        cache: dict[str, dict] = {}
        content_hash, files = hash_tree(workdir, cache)
        _write_json_atomic(workdir / VERIFY_CACHE, cache)
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
            shutil.rmtree(target / CHECKPOINTS, ignore_errors=True)
            return Version(stage, number, target, _read_manifest(target))

    # ---------------------------------------------------------------- lineage

    def lineage(self, ref: str) -> list[Version]:
        """The version and all its ancestors, depth first, each once; raises on a broken link."""
        chain = []
        for _, version, note in self._walk(self.resolve(ref, verify=False)):
            if version is None:
                raise RegistryError(f"broken lineage of {ref!r}: {note}")
            if not note:
                chain.append(version)
        return chain

    def format_lineage(self, ref: str, verify: bool = False, problems: list[str] | None = None) -> str:
        """One line per ancestor, indented by depth; broken links are shown, not raised. With ``verify``
        each version's files are checked too; every problem found is also appended to ``problems``."""
        lines = []
        for depth, version, note in self._walk(self.resolve(ref, verify=False)):
            indent = "  " * depth
            if version is None:
                lines.append(f"{indent}!! {note}")
                problems is not None and problems.append(note)
            elif note:
                lines.append(f"{indent}{version.id}  ({note})")
            else:
                fields = [version.id, version.manifest.get("created_at", "?"),
                          version.content_hash[:12]]
                metrics = _format_metrics(version.manifest.get("metrics") or {})
                lines.append(indent + "  ".join(fields + ([metrics] if metrics else [])))
                problem = self._integrity_problem(version) if verify else None
                if problem:
                    lines.append(f"{indent}  !! {problem}")
                    problems is not None and problems.append(problem)
        return "\n".join(lines)

    def check_parent(self, version: Version) -> None:
        """Refuse a parent whose lineage is broken or whose files, or any ancestor's, differ from
        their manifests: a stage built on it could not be traced back, or would train on other bytes."""
        for _, found, note in self._walk(version):
            if found is None:
                raise RegistryError(f"cannot use {version.id} as a parent: its lineage is broken: {note}; "
                                    f"rebuild it from a complete chain (run its stage with --force)")
            if not note:
                self.verify(found)

    def _integrity_problem(self, version: Version) -> str | None:
        try:
            self.verify(version)
        except IntegrityError as err:
            return str(err)
        return None

    # -------------------------------------------------------------- integrity

    def verify(self, version: Version, full: bool = False) -> int:
        """Check a version's files against its manifest and return how many were checked; raise
        IntegrityError naming the first file that differs. The fast check (default) compares sizes
        and re-hashes only files whose stat changed since they were last hashed (cached per version);
        ``full`` re-hashes every file."""
        return verify_files(version.path, version.manifest, version.id, full=full)

    # ----------------------------------------------------------- housekeeping

    def collect_garbage(self, dry_run: bool = False) -> list[str]:
        """Remove work directories no live process holds, their stale lock files, and training
        checkpoints left inside complete versions (a kill right after the rename). One line per
        directory, removed or kept; a held work directory is never touched."""
        report: list[str] = []
        if not self.root.is_dir():
            return report
        verb = "would remove" if dry_run else "removed"
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for work in sorted(p for p in stage_dir.glob(f"{WORKDIR_PREFIX}*") if p.is_dir()):
                try:
                    lock = WorkdirLock.acquire(work)
                except WorkdirBusy as busy:
                    report.append(f"kept {work}: in use by {busy.holder}")
                    continue
                try:
                    size = _tree_bytes(work)
                    if not dry_run:
                        shutil.rmtree(work)
                    report.append(f"{verb} {work} ({_format_bytes(size)}, abandoned)")
                finally:
                    lock.release()
            for lock_file in stage_dir.glob(f"{WORKDIR_PREFIX}*{LOCK_SUFFIX}"):
                work = lock_file.with_name(lock_file.name[:-len(LOCK_SUFFIX)])
                if not work.exists():  # taking and releasing the lock removes the file, if nobody holds it
                    try:
                        WorkdirLock.acquire(work).release()
                    except WorkdirBusy:
                        pass
            for _, path in _version_dirs(stage_dir):
                leftover = path / CHECKPOINTS
                if leftover.is_dir() and (_read_manifest(path) or {}).get("status") == STATUS_COMPLETE:
                    size = _tree_bytes(leftover)
                    if not dry_run:
                        shutil.rmtree(leftover)
                    report.append(f"{verb} {leftover} ({_format_bytes(size)}, training state of a committed version)")
        return report

    def _walk(self, start: Version):
        """Yield (depth, version, note) depth first: note is None for a first visit, "shown above"
        for a repeat, and the problem (with version None) for a missing or replaced parent."""
        seen: set[str] = set()

        def visit(version: Version, depth: int):
            seen.add(version.id)
            yield depth, version, None
            for parent in version.parents:
                found = self.find_parent(parent)
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

    def find_parent(self, parent: dict) -> Version | None:
        """The version a manifest's parent entry names, if it is complete here (its content is not compared)."""
        for version in self.versions(parent["stage"]):
            if version.number == parent["version"]:
                return version
        return None


# ------------------------------------------------------------ work-directory locks

class WorkdirLock:
    """An exclusive OS lock (flock) on ``<workdir>.lock``, a file that names its holder.

    The OS drops the lock when its process dies, however it dies, so a killed run never blocks the
    next one and its work can be resumed at once; while the holder lives, a second process asking
    for the lock is refused with the holder's PID, host and command.
    """

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, workdir: Path) -> "WorkdirLock":
        path = workdir.with_name(workdir.name + LOCK_SUFFIX)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise RegistryError(f"{path}: cannot create the lock file of {workdir.name} ({err.strerror})") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                busy = WorkdirBusy(f"{workdir} is in use by {holder}; two runs of one stage would overwrite each "
                                   f"other's checkpoints. Wait for it to finish, or stop it and rerun with --resume "
                                   f"to continue its work")
                busy.holder = holder
                raise busy from None
            # A holder removes the file when it lets go: if that happened after our open, we hold a
            # file nobody else will look at, so start again with the one now at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still held, so nobody can take a lock on the file being removed
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
        return (f"process {holder['pid']} on {holder['host']} (since {holder['since']}: "
                f"{holder['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


# ------------------------------------------------------------------ integrity

def verify_files(directory: Path, manifest: dict, label: str, full: bool = False) -> int:
    """Check the files of a version directory against its manifest (see Registry.verify)."""
    directory = Path(directory)

    def fail(what: str) -> typing.NoReturn:
        raise IntegrityError(f"{what}: {label} changed after it was committed; restore the file, or rebuild "
                             f"the version (run its stage with --force)")

    files = manifest.get("files")
    entries_ok = isinstance(files, dict) and all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
        for e in files.values())
    if not entries_ok or _tree_hash(files) != manifest.get("content_hash"):
        fail(f"{directory / MANIFEST}: its file list does not give its content_hash")
    cache = {} if full else _read_verify_cache(directory)
    fresh = {}
    for relative, entry in files.items():
        path = directory / relative
        try:
            stat = path.stat()
        except OSError:
            fail(f"{path}: missing, but the manifest of {label} records {entry['bytes']} bytes")
        if stat.st_size != entry["bytes"]:
            fail(f"{path}: {stat.st_size} bytes, but the manifest of {label} records {entry['bytes']}")
        cached = cache.get(relative)
        if _trusted(cached, stat, entry["sha256"]):
            fresh[relative] = cached
            continue
        checked_ns = time.time_ns()
        digest, _ = _hash_file(path, sync=False)
        if digest != entry["sha256"]:
            fail(f"{path}: sha256 {digest[:12]}, but the manifest of {label} records {entry['sha256'][:12]}")
        fresh[relative] = {"stat": _stat_key(stat), "sha256": digest, "checked_ns": checked_ns}
    extra = sorted(set(_relative_files(directory)) - set(files))
    if extra:
        fail(f"{directory / extra[0]}: not in the manifest of {label}"
             + (f" (nor are {len(extra) - 1} other files)" if len(extra) > 1 else ""))
    if fresh != cache:
        try:
            _write_json_atomic(directory / VERIFY_CACHE, fresh, sync=False)
        except OSError:  # a read-only registry is still verified, just hashed again next time
            pass
    return len(files)


def _stat_key(stat: os.stat_result) -> list[int]:
    # ctime cannot be set back by a user (unlike mtime), and any write or chmod moves it
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _trusted(cached: Any, stat: os.stat_result, sha256: str) -> bool:
    """A cache entry stands for the file when its stat is unchanged since it was hashed, its hash is
    the manifest's, and the file had not changed just before (a change within one timestamp tick
    would not show in the stat)."""
    try:
        _, mtime_ns, ctime_ns, _ = cached["stat"]
        return (cached["stat"] == _stat_key(stat) and cached["sha256"] == sha256
                and max(mtime_ns, ctime_ns) < cached["checked_ns"] - _RACY_NS)
    except (TypeError, KeyError, ValueError):
        return False


def _read_verify_cache(directory: Path) -> dict:
    try:
        cache = json.loads((directory / VERIFY_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _relative_files(directory: Path) -> list[str]:
    return [p.relative_to(directory).as_posix() for p in _files_under(directory)]


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file() and not p.is_symlink())


def _format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"



# -------------------------------------------------------------- helpers

def hash_tree(directory: Path, verify_cache: dict | None = None) -> tuple[str, dict]:
    """Content hash of a directory: sha256 over (relative path, file sha256) of every file.

    manifest.json, the verify cache and checkpoints/ are left out. Files are read in chunks and
    fsynced, so a manifest never claims bytes that a power loss could still take back. With
    ``verify_cache``, each file's stat and hash are recorded in it for later fast checks.
    """
    directory = Path(directory)
    files = {}
    for path in sorted(_files_under(directory), key=lambda p: p.relative_to(directory).as_posix()):
        relative = path.relative_to(directory).as_posix()
        stat, checked_ns = path.stat(), time.time_ns()
        digest, size = _hash_file(path)
        files[relative] = {"sha256": digest, "bytes": size}
        if verify_cache is not None:
            verify_cache[relative] = {"stat": _stat_key(stat), "sha256": digest, "checked_ns": checked_ns}
    return _tree_hash(files), files


def _tree_hash(files: dict) -> str:
    total = hashlib.sha256()
    for relative, entry in files.items():
        total.update(f"{relative}\0{entry['sha256']}\n".encode())
    return total.hexdigest()


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
            filenames = [f for f in filenames if not _is_bookkeeping(f)]
        for name in filenames:
            yield here / name


def _is_bookkeeping(name: str) -> bool:
    """The registry's own files at the top of a version, never part of its content."""
    return name in (MANIFEST, VERIFY_CACHE) or name.startswith((f".{MANIFEST}", f".{VERIFY_CACHE}"))


def _hash_file(path: Path, sync: bool = True) -> tuple[str, int]:
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
        if sync:
            _fsync(handle.fileno())
    return digest.hexdigest(), size


def _write_json_atomic(path: Path, value: dict, sync: bool = True) -> None:
    # a temporary name of its own, so two processes writing the same file never share one
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, sort_keys=False, ensure_ascii=False,
                      default=json_default)
            handle.write("\n")
            handle.flush()
            if sync:
                _fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if sync:
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
