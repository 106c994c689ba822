"""The stage catalogue: the one list of the pipeline's stages, in order.

The CLI's stage names and aliases, the pipeline order, ``--until``, the Makefile's ``stage-N`` targets and
the stage table of docs/ARCHITECTURE.md all come from here (tests/test_catalogue.py keeps the Makefile
and the docs equal to it; ``python -m stages.catalogue`` prints both). Adding a stage is one entry here,
its module with ``run(recipe, registry, *, force, resume) -> list[Version]``, and its recipe section.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from stages.config import RecipeError


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str                     # its name on the command line (`chatalign stage <name>`)
    number: int                   # its place in the pipeline; also an alias, as are "stage-<number>" and `aliases`
    section: str                  # the recipe section it reads
    versions: tuple[str, ...]     # the registry stages it writes (runs/<recipe>/<version stage>/v<N>)
    module: str                   # the module whose run(recipe, registry, *, force, resume) runs it
    summary: str                  # one line for `make help` and the docs
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that selects this stage."""
        return (self.name, str(self.number), f"stage-{self.number}", *self.aliases)

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


STAGES: tuple[Stage, ...] = (
    Stage("base", 0, "model", ("base",), "stages.base", "import the base model"),
    Stage("sft", 1, "sft", ("sft",), "stages.sft", "supervised fine-tuning"),
    Stage("reward", 2, "reward", ("rm-helpful", "rm-safety"), "stages.reward_models",
          "helpfulness and safety reward models", aliases=("rm",)),
    Stage("rejection_sampling", 3, "rejection_sampling", ("rs",), "stages.rejection_sampling",
          "iterative rejection-sampling fine-tuning", aliases=("rs",)),
    Stage("gatt", 4, "gatt", ("gatt",), "stages.gatt", "Ghost Attention multi-turn data and fine-tuning",
          aliases=("ghost_attention",)),
    Stage("context_distillation", 5, "context_distillation", ("distill",), "stages.context_distillation",
          "safety context distillation", aliases=("distill",)),
    Stage("ppo", 6, "ppo", ("ppo",), "stages.ppo", "PPO on the safety-gated reward with a per-token KL penalty"),
)


def stage(name: str, what: str = "stage") -> Stage:
    """The stage a name, number or alias selects (``what`` names the option in the error)."""
    for entry in STAGES:
        if name in entry.names:
            return entry
    raise RecipeError(f"{what}: unknown stage '{name}': expected one of {', '.join(s.name for s in STAGES)} "
                      f"(or its number)")


def until(name: str | None) -> tuple[Stage, ...]:
    """The stages of a pipeline run that stops after ``name`` (all of them for None)."""
    if name is None:
        return STAGES
    last = stage(name, "--until")
    return STAGES[:STAGES.index(last) + 1]


def makefile_targets() -> str:
    """The Makefile's stage targets: each runs its stage after the one before it."""
    lines = []
    for previous, entry in zip((None, *STAGES), STAGES):
        after = f"stage-{previous.number}" if previous is not None else "install"
        lines += [f"stage-{entry.number}: {after} ## stage {entry.number}: {entry.summary}",
                  f"\t$(BIN)/chatalign stage {entry.name} --recipe $(RECIPE) $(ARGS)", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def docs_table() -> str:
    """The stage table of docs/ARCHITECTURE.md."""
    rows = ["| # | stage (`chatalign stage …`, `make stage-N`) | recipe section | registry versions | module |",
            "|---|---|---|---|---|"]
    for entry in STAGES:
        names = ", ".join(f"`{n}`" for n in (entry.name, *entry.aliases))
        versions = ", ".join(f"`{v}`" for v in entry.versions)
        rows.append(f"| {entry.number} | {names}: {entry.summary} | `{entry.section}` | {versions} | "
                    f"`{entry.module.replace('.', '/')}.py` |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(makefile_targets() + "\n" + docs_table())
