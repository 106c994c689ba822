"""What every stage shares: the registry of a recipe, reuse of unchanged work, one-line errors, logging."""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data.runtime import barrier, is_main_process, phase_times
from stages.recipe import Recipe
from stages.registry import Registry, Version
from stages.tracking import log_artifact, start_wandb

log = logging.getLogger("chatalign")


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


def open_registry(recipe: Recipe) -> Registry:
    return Registry(Path(recipe.runs_dir) / recipe.name)


class StageError(RuntimeError):
    """A stage stopped on a problem the user can act on (e.g. training diverged): one line, exit code 2."""


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a stage: says where its unfinished work is kept for --resume."""

    def __init__(self, stage: str, workdir: Path):
        super().__init__(f"{stage} interrupted; its unfinished work is kept in {workdir}: run the same command "
                         f"with --resume to continue from its last checkpoint")
        self.stage, self.workdir = stage, workdir


@dataclass
class StageRun:
    """A stage's in-progress work: where to write, and what the manifest will record."""

    registry: Registry
    stage: str
    workdir: Path
    parents: list[Version]
    section: dict[str, Any]
    data_fingerprints: dict[str, str]
    seed: int
    resume: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    wandb_run: Any = None  # a live W&B run on the main process when the recipe enables W&B

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)


def run_stage(recipe: Recipe, registry: Registry, stage: str, body: Callable[[StageRun], None], *,
              section: dict[str, Any], parents: list[Version], data_fingerprints: dict[str, str],
              force: bool = False, resume: bool = False) -> Version:
    """Run ``body`` unless an identical run exists; commit its workdir as the stage's next version.

    ``stage`` is the registry name of the version (e.g. ``rm-helpful``), ``section`` the recipe section
    as recorded and hashed (``recipe.section(name)``; a stage that commits several versions from one
    section, such as the rounds of rejection sampling, records each one's share). A stage's inputs are
    its parents' content hashes, its section, its data fingerprints and the seed; when they match a
    finished version, that version is reused (``force`` re-runs).
    Every parent is checked first (unbroken lineage, files as their manifests record). The main
    process holds the work directory's lock from before it discards or resumes anything until the
    version is in place, so a second run of the same stage is refused rather than deleting live work;
    Ctrl-C raises StageInterrupted, which names the work directory to --resume.
    """
    for parent in parents:  # a broken chain or changed bytes must stop the stage before it reuses or trains
        registry.check_parent(parent)
    fingerprint = registry.inputs_fingerprint(parents, section, data_fingerprints, recipe.seed)
    if not force:
        reusable = registry.find_reusable(stage, fingerprint)
        if reusable is not None:
            log.info("%s: inputs unchanged, reusing %s (pass --force to run again)", stage, reusable.ref)
            return reusable
    registry.check_writable()
    workdir = registry.workdir(stage, fingerprint)
    # One writer per work directory: the main process holds its lock until the version is in place.
    lock = registry.lock_workdir(workdir) if is_main_process() else None
    run = None
    try:
        if workdir.exists() and any(workdir.iterdir()) and not resume and is_main_process():
            log.info("%s: discarding unfinished work in %s (pass --resume to continue it)", stage, workdir.name)
            shutil.rmtree(workdir)
        barrier()
        workdir.mkdir(parents=True, exist_ok=True)
        run = StageRun(registry, stage, workdir, parents, section, data_fingerprints, recipe.seed, resume)
        if recipe.wandb.enabled and is_main_process():
            run.wandb_run = start_wandb(recipe, stage, section)
        start = time.time()
        phase_times(reset=True)
        body(run)
        barrier()
        version = None
        if is_main_process():
            # where the time went: training, sampling, scoring, evaluation, saving (data.runtime.phase)
            run.metrics["time_s"] = {**phase_times(reset=True), "wall": round(time.time() - start, 2)}
            version = registry.commit(stage, workdir, parents=parents, recipe_section=section,
                                      data_fingerprints=data_fingerprints, seed=recipe.seed, metrics=run.metrics,
                                      wall_time_s=round(time.time() - start, 2),
                                      extra=run.extra)
            log.info("%s: wrote %s (%s)", stage, version.ref, version.path)
            if run.wandb_run is not None:
                log_artifact(version, run.wandb_run)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, StageInterrupted):
            raise
        raise StageInterrupted(stage, workdir) from interrupt
    finally:
        if run is not None and run.wandb_run is not None:
            run.wandb_run.finish()
        if lock is not None:
            lock.release()
    barrier()
    return version if version is not None else registry.latest(stage)
