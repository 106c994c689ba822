"""The stage catalogue is the one list of stages: the CLI, the pipeline order, the Makefile and the docs follow it."""
import re
from pathlib import Path

import pytest

from stages import catalogue
from stages.recipe import Recipe, RecipeError

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_number_and_alias_selects_its_stage():
    rs = catalogue.stage("rejection_sampling")
    assert {catalogue.stage(n) for n in ("rejection_sampling", "3", "rs", "stage-3")} == {rs}
    assert catalogue.stage("rm") is catalogue.stage("reward") is catalogue.stage("2")
    names = [n for entry in catalogue.STAGES for n in entry.names]
    assert len(names) == len(set(names)), "a name may select one stage only"
    with pytest.raises(RecipeError, match="--until: unknown stage 'dpo'"):
        catalogue.until("dpo")
    assert [s.name for s in catalogue.until("sft")] == ["base", "sft"]
    assert catalogue.until(None) == catalogue.STAGES


def test_each_entry_names_a_recipe_section_and_a_module_with_run():
    numbers = [s.number for s in catalogue.STAGES]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0  # in pipeline order, each number once
    sections = {f for f in Recipe.__dataclass_fields__}
    for entry in catalogue.STAGES:
        assert entry.section in sections
        run = entry.load().run
        assert list(run.__kwdefaults__) == ["force", "resume"]  # run(recipe, registry, *, force, resume)


def test_the_makefile_stage_targets_are_the_catalogue():
    makefile = (ROOT / "Makefile").read_text()
    start = makefile.index("stage-0:")
    end = makefile.index("\n\n", makefile.index(f"stage-{catalogue.STAGES[-1].number}:")) + 1
    assert makefile[start:end] == catalogue.makefile_targets(), (
        "Makefile stage targets differ from stages/catalogue.py; paste the output of `python -m stages.catalogue`")
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
    assert {f"stage-{s.number}" for s in catalogue.STAGES} <= set(phony)


def test_the_docs_stage_table_is_the_catalogue():
    docs = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert catalogue.docs_table() in docs, (
        "the stage table of docs/ARCHITECTURE.md differs from stages/catalogue.py; paste the output of "
        "`python -m stages.catalogue`")


def test_each_stage_after_rejection_sampling_starts_from_the_policy_of_the_stage_before_it():
    """The paper's order by default (GAtt, then context distillation, then PPO on the distilled policy); a recipe
    moves a stage by its policy ref (e.g. ppo.policy: rs@latest leaves stages 4 and 5 out of PPO's lineage)."""
    recipe = Recipe()
    names = [s.name for s in catalogue.STAGES]
    chain = catalogue.STAGES[names.index("rejection_sampling"):]
    for previous, entry in zip(chain, chain[1:]):
        assert getattr(recipe, entry.section).policy == f"{previous.versions[0]}@latest", entry.name
