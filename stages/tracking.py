"""Weights & Biases, when a recipe turns it on: a run per stage, and each version logged as an artifact with
its parents as inputs (the registry stays the record; W&B mirrors it)."""
from __future__ import annotations

from typing import Any

from stages.registry import MANIFEST, Registry, Version


def start_wandb(recipe: Any, stage: str, section: dict[str, Any]) -> Any:
    """A W&B run for one stage version, configured with its recipe section."""
    import wandb  # only when the recipe enables W&B: importing it costs seconds

    return wandb.init(project=recipe.wandb.project, entity=recipe.wandb.entity, mode=recipe.wandb.mode,
                      job_type=stage, name=f"{recipe.name}-{stage}", config={"recipe": recipe.name, stage: section},
                      reinit="finish_previous")


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
            found = registry.find_parent(parent)
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
