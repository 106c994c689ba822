"""Train/test parts of a data source (data/sources.py): a seeded hash of each record's prompt decides the
part, so the parts are disjoint and complete, a prompt never straddles them, and ``n`` is taken from the
part after the split. Plus a smoke run of recipes/smollm2-rm-real.yaml on the tiny model (real data)."""
import collections
import dataclasses
import json
from pathlib import Path

import pytest

from data.loaders import write_jsonl
from data.records import Conversation, DataError, Preference
from data.sources import load_conversations, load_preferences, prompt_hash, split_part
from stages.recipe import DataSource, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
REAL_RECIPE = ROOT / "recipes" / "smollm2-rm-real.yaml"


def preference_file(tmp_path, n_prompts=60, repeats=(1, 2, 3)):
    """Pairs on n_prompts prompts, some prompts asked 2 or 3 times (as PandaLM's several model pairs)."""
    rows = []
    for i in range(n_prompts):
        for k in range(repeats[i % len(repeats)]):
            rows.append(Preference(prompt=[{"role": "user", "content": f"question {i}"}], chosen=f"good {i}.{k}",
                                   rejected=f"bad {i}.{k}", rating="better"))
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, rows)
    return path, rows


def key(record):
    return json.dumps(record.to_dict(), sort_keys=True)


def prompts(records):
    return {json.dumps(r.prompt) for r in records}


def src(path, **kw):
    return DataSource(source=str(path), **kw)


def test_train_and_test_parts_are_disjoint_and_complete(tmp_path):
    path, rows = preference_file(tmp_path)
    train = load_preferences([src(path, part="train", test_fraction=0.3)], seed=0, key="k")
    test = load_preferences([src(path, part="test", test_fraction=0.3)], seed=0, key="k")
    assert train and test
    assert prompts(train).isdisjoint(prompts(test))  # so no pair either
    # together they are the whole file, each part in file order
    assert collections.Counter(map(key, train + test)) == collections.Counter(map(key, rows))
    order = {key(r): i for i, r in enumerate(rows)}
    for part in (train, test):
        assert [order[key(r)] for r in part] == sorted(order[key(r)] for r in part)
    # every pair asked on one prompt lands in the same part
    per_prompt = collections.Counter(json.dumps(r.prompt) for r in rows)
    for part in (train, test):
        assert collections.Counter(json.dumps(r.prompt) for r in part) == {p: per_prompt[p] for p in prompts(part)}


def test_split_is_deterministic_and_seeded(tmp_path):
    path, _ = preference_file(tmp_path)
    sources = [src(path, part="test")]
    first = load_preferences(sources, seed=3, key="k")
    assert load_preferences(sources, seed=3, key="k") == first
    assert prompts(load_preferences(sources, seed=4, key="k")) != prompts(first)  # the recipe seed moves it
    pair = first[0]
    assert prompt_hash(pair, 3) == prompt_hash(dataclasses.replace(pair, chosen="other", rejected="answers"), 3)


def test_test_fraction_is_the_share_of_prompts():
    pairs = [Preference(prompt=[{"role": "user", "content": f"prompt number {i}"}], chosen="a", rejected="b")
             for i in range(4000)]
    for fraction in (0.1, 0.25, 0.5):
        test = split_part(pairs, "test", fraction, seed=0)
        assert abs(len(test) / len(pairs) - fraction) < 0.03  # 4 binomial standard deviations at most
        assert len(split_part(pairs, "train", fraction, seed=0)) == len(pairs) - len(test)
    assert split_part(pairs, "all", 0.25, seed=0) == pairs
    assert split_part(pairs, "test", 0.0, seed=0) == [] and split_part(pairs, "train", 1.0, seed=0) == []


def test_n_is_taken_from_the_part_after_the_split(tmp_path):
    path, rows = preference_file(tmp_path)
    whole_train = load_preferences([src(path, part="train")], seed=0, key="k")
    whole_test = load_preferences([src(path, part="test")], seed=0, key="k")
    train = load_preferences([src(path, part="train", n=10)], seed=0, key="k")
    test = load_preferences([src(path, part="test", n=5)], seed=0, key="k")
    assert train == whole_train[:10] and test == whole_test[:5]
    assert len(train) == 10 and len(test) == 5
    # not the split of the file's first rows: the test part draws from the whole file
    assert test != split_part(rows[:5], "test", 0.2, seed=0)[:5]
    assert prompts(train).isdisjoint(prompts(test))
    # part "all" keeps the old meaning: the first n rows of the file
    assert load_preferences([src(path, n=7)], seed=0, key="k") == rows[:7]


def test_conversations_split_by_their_prompt_up_to_the_last_user_turn(tmp_path):
    conversations = []
    for i in range(80):
        for answer in ("one answer", "another answer"):
            conversations.append(Conversation(messages=[
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": f"what is {i} + 1?"},
                {"role": "assistant", "content": answer}]))
    path = tmp_path / "chats.jsonl"
    write_jsonl(path, conversations)
    train = load_conversations([src(path, part="train", test_fraction=0.5)], seed=0, key="sft.data")
    test = load_conversations([src(path, part="test", test_fraction=0.5)], seed=0, key="sft.heldout")
    assert len(train) + len(test) == 160 and len(train) % 2 == 0 and len(test) % 2 == 0  # answers stay together

    def heads(records):
        return {json.dumps(r.messages[:4]) for r in records}

    assert heads(train).isdisjoint(heads(test))
    # a conversation and a preference pair on the same prompt fall on the same side
    pair = Preference(prompt=conversations[0].messages[:4], chosen="x", rejected="y")
    assert prompt_hash(pair, 0) == prompt_hash(conversations[0], 0)


def test_builtin_parts_have_n_records_and_disjoint_prompts():
    train = load_preferences([DataSource(n=40, part="train", test_fraction=0.3)], seed=0, key="k", kind="safety")
    test = load_preferences([DataSource(n=20, part="test", test_fraction=0.3)], seed=0, key="k", kind="safety")
    assert len(train) == 40 and len(test) == 20
    assert prompts(train).isdisjoint(prompts(test))
    assert all(prompt_hash(p, 0) < 0.3 for p in test) and all(prompt_hash(p, 0) >= 0.3 for p in train)
    chats = load_conversations([DataSource(n=30, part="test")], seed=0, key="sft.heldout")
    assert len(chats) == 30


def test_an_empty_part_is_an_error_naming_the_key(tmp_path):
    path, _ = preference_file(tmp_path)
    with pytest.raises(DataError, match=r"reward.helpful.test\[0\]: part 'test' .* is empty"):
        load_preferences([src(path, part="test", test_fraction=0.0)], seed=0, key="reward.helpful.test")
    with pytest.raises(DataError, match="always empty"):
        load_preferences([DataSource(n=4, part="test", test_fraction=0.0)], seed=0, key="k")


def test_recipe_reads_part_and_test_fraction(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward:\n  helpful:\n    test: [{source: x.jsonl, part: test, test_fraction: 0.25}]\n")
    (source,) = load_recipe(recipe).reward.helpful.test
    assert (source.part, source.test_fraction, source.n) == ("test", 0.25, None)
    recipe.write_text("reward:\n  helpful:\n    test: [{source: x.jsonl, part: heldout}]\n")
    with pytest.raises(RecipeError, match="line 3.*part"):
        load_recipe(recipe)


# --- the real-data recipe, on the tiny model ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "pandalm-testset" / "testset-v1.json").exists()
                    or not (SHARED_DATA / "hh-rlhf-harmless" / "test.rows0-1599.jsonl.gz").exists(),
                    reason="needs the shared PandaLM test set and HH-RLHF harmless rows beside the repository")
def test_real_data_recipe_runs_on_the_tiny_model(tmp_path):
    """recipes/smollm2-rm-real.yaml as written, with the tiny model and 16 training pairs per RM: the
    reward stage starts from the base, each RM trains on its own data only, and eval.json reports
    accuracy for every rating the PandaLM test pairs carry."""
    from stages import base, reward_models
    from stages.common import open_registry

    recipe = load_recipe(REAL_RECIPE)
    assert recipe.reward.parent == "base@latest"

    def small(sources, n):  # the recipe's sources, made absolute (the test does not depend on the cwd)
        return [dataclasses.replace(s, source=str((ROOT / s.source).resolve()), n=n) for s in sources]

    section = recipe.reward
    section = dataclasses.replace(
        section, train=dataclasses.replace(section.train, micro_batch_size=8),
        helpful=dataclasses.replace(section.helpful, data=small(section.helpful.data, 16),
                                    test=small(section.helpful.test, 48)),
        safety=dataclasses.replace(section.safety, data=small(section.safety.data, 16),
                                   test=small(section.safety.test, 16)))
    recipe = dataclasses.replace(recipe, runs_dir=str(tmp_path / "runs"), reward=section,
                                 model=dataclasses.replace(recipe.model, source="tiny"))
    registry = open_registry(recipe)
    (base_version,) = base.run(recipe, registry)
    versions = reward_models.run(recipe, registry)

    assert [v.id for v in versions] == ["rm-helpful/v1", "rm-safety/v1"]
    pandalm_test = load_preferences(section.helpful.test, recipe.seed, "reward.helpful.test", kind="helpful")
    pandalm_ratings = {p.rating for p in pandalm_test}
    assert len(pandalm_ratings) >= 2
    for version in versions:
        manifest = version.manifest
        assert [p["id"] for p in manifest["parents"]] == [base_version.id]
        evaluation = json.loads((version.path / "eval.json").read_text())["test_sets"]
        assert evaluation["helpful"]["n"] == 48 and evaluation["safety"]["n"] == 16
        assert set(evaluation["helpful"]["per_rating"]) == pandalm_ratings
        assert set(evaluation["safety"]["per_rating"]) == {"unrated"}  # HH pairs carry no rating
        assert set(manifest["metrics"]["eval_helpful"]["per_rating"]) == pandalm_ratings
    helpful, safety = (v.manifest["mixture"]["counts"] for v in versions)
    assert helpful == {"helpful": 16, "safety": 0, "other": 0, "total": 16}  # own data only
    assert safety == {"safety": 16, "helpful": 0, "total": 16}


def test_a_source_can_tag_every_prompt_as_a_safety_prompt(tmp_path):
    """Adversarial prompt files carry no tag of their own: the recipe's is_safety sets meta.is_safety, which
    the safety gate reads; null keeps what the data says."""
    path = tmp_path / "adversarial.csv"
    path.write_text("goal,target\nDo a harmful thing,Sure\nDo another harmful thing,Sure\n")
    tagged = load_conversations([DataSource(source=str(path), format="goal", is_safety=True)], 0, "rs.prompts")
    assert [c.meta["is_safety"] for c in tagged] == [True, True]
    assert tagged[0].messages == [{"role": "user", "content": "Do a harmful thing"}] and tagged[0].meta["target"] == "Sure"
    untagged = load_conversations([DataSource(source=str(path), format="goal")], 0, "rs.prompts")
    assert all("is_safety" not in c.meta for c in untagged)


def test_pairs_with_one_expert_label_read_as_preferences(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"input": "Name a fruit.", "output_1": "A chair.", "output_2": "An apple.", "label": 2},
                                {"input": "Say hi.", "output_1": "Hi!", "output_2": "No.", "label": 1}]))
    pairs = load_preferences([DataSource(source=str(path))], 0, "reward.helpful.test")  # format detected
    assert [(p.chosen, p.rejected) for p in pairs] == [("An apple.", "A chair."), ("Hi!", "No.")]
    assert pairs[0].prompt == [{"role": "user", "content": "Name a fruit."}] and pairs[0].rating is None
    path.write_text(json.dumps([{"input": "x", "output_1": "a", "output_2": "b", "label": 3}]))
    from data.records import DataError
    with pytest.raises(DataError, match="label"):
        load_preferences([DataSource(source=str(path))], 0, "reward.helpful.test")


def test_builtin_kinds_restrict_the_demonstrations_and_other_sources_refuse_them(tmp_path):
    only = load_conversations([DataSource(source="builtin", n=12, kinds=["borderline"])], 0, "x.replay")
    assert len(only) == 12 and {c.meta["kind"] for c in only} == {"borderline"}
    mixed = load_conversations([DataSource(source="builtin", n=40, kinds=["helpful", "borderline"])], 0, "x")
    assert {c.meta["kind"] for c in mixed} == {"helpful", "borderline"}
    assert all(c.meta["kind"] != "harmful" for c in mixed)
    with pytest.raises(DataError, match=r"x\.replay\[0\]\.kinds.*expected some of"):
        load_conversations([DataSource(source="builtin", n=4, kinds=["toxic"])], 0, "x.replay")
    path = tmp_path / "chats.jsonl"
    write_jsonl(path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    with pytest.raises(DataError, match=r"x\[0\]\.kinds.*only the builtin source"):
        load_conversations([DataSource(source=str(path), kinds=["helpful"])], 0, "x")
