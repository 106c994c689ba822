"""Recipe schema: defaults from the paper, validation that names the key and line, overrides."""
from pathlib import Path

import pytest

from stages.recipe import Recipe, RecipeError, describe, dump_recipe, load_recipe, recipe_from_dict

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_paper_defaults():
    train = Recipe().sft.train
    assert (train.optim.lr, train.optim.weight_decay, train.optim.schedule, train.epochs) == (2e-5, 0.1, "cosine", 2.0)
    assert (train.optim.beta1, train.optim.beta2, train.optim.eps, train.optim.grad_clip) == (0.9, 0.95, 1e-5, 1.0)
    assert (train.batch_size, train.seq_len, train.packing, train.train_on) == (64, 4096, True, "all_assistant")


@pytest.mark.parametrize("name", ["tiny.yaml", "smollm2-135m.yaml", "smollm2-135m-fast.yaml", "llama2-7b.yaml"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.name == name.removesuffix(".yaml")


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = write(tmp_path, "name: x\nsft:\n  train:\n    epochs: 1\n    batch_sze: 8\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "line 5" in message and "sft.train.batch_sze" in message and "did you mean 'batch_size'" in message


def test_a_training_knob_outside_train_points_to_it(tmp_path):
    with pytest.raises(RecipeError, match=r"line 3: key 'reward.epochs': unknown key \(did you mean 'train.epochs'"):
        load_recipe(write(tmp_path, "name: x\nreward:\n  epochs: 1\n"))


@pytest.mark.parametrize("text, key, expected", [
    ("sft:\n  train:\n    epochs: two\n", "sft.train.epochs", "expected a number"),
    ("sft:\n  train:\n    batch_size: 1.5\n", "sft.train.batch_size", "expected an integer"),
    ("sft:\n  train:\n    packing: 1\n", "sft.train.packing", "expected true or false"),
    ("sft:\n  train:\n    optim: {schedule: step}\n", "sft.train.optim.schedule",
     "one of 'cosine', 'constant', 'linear'"),
    ("sft:\n  train:\n    optim: {lr: -1}\n", "sft.train.optim.lr", "must be >= 0"),
    ("sft:\n  train:\n    lora: {dropout: 2}\n", "sft.train.lora.dropout", "must be <= 1"),
    ("model:\n  source: s3\n", "model.source", "one of"),
    ("sft:\n  data: {source: builtin}\n", "sft.data", "expected a list"),
    ("sft:\n  data: [{source: builtin, nn: 3}]\n", "sft.data[0].nn", "unknown key"),
    ("sft: 3\n", "sft", "expected a mapping"),
    ("sft:\n  train:\n    epochs: 0\n", "sft.train.epochs", "must be > 0.0"),
    ("reward:\n  train:\n    epochs: 0\n", "reward.train.epochs", "must be > 0.0"),
    ("sft:\n  train:\n    optim: {lr: .nan}\n", "sft.train.optim.lr", "expected a finite number"),
    ("rejection_sampling:\n  temperatures: [1.0, .inf]\n", "rejection_sampling.temperatures[1]", "finite"),
    ("model: {source: tiny, tiny: {heads: 4, kv_heads: 3}}\n", "model.tiny.kv_heads", "must divide heads (4)"),
    ("model: {source: tiny, tiny: {hidden_size: 64, heads: 5, kv_heads: 1}}\n", "model.tiny.heads",
     "must divide hidden_size (64)"),
    ("model: {source: tiny, tiny: {hidden_size: 24, heads: 8, kv_heads: 1}}\n", "model.tiny.hidden_size",
     "must be even"),
    ("sft: {train: {batch_size: 10, micro_batch_size: 4}}\n", "sft.train.batch_size",
     "multiple of micro_batch_size (4)"),
    ("name: ../escaped\n", "name", "plain directory name"),
    ("name: .hidden\n", "name", "plain directory name"),
    ("name: a/b\n", "name", "plain directory name"),
])
def test_bad_values_fail_before_work(tmp_path, text, key, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert f"key '{key}'" in str(err.value) and expected in str(err.value)


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml, line \d+: not valid YAML"):
        load_recipe(write(tmp_path, "name: x\nsft: [\n"))


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_dotted_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, "sft:\n  train:\n    epochs: 1\n"),
                         ["sft.train.optim.lr=1e-5", "sft.train.lora.enabled=true", "name=other"])
    train = recipe.sft.train
    assert train.optim.lr == 1e-5 and train.lora.enabled is True and train.epochs == 1 and recipe.name == "other"
    with pytest.raises(RecipeError, match="overridden with --set"):
        load_recipe(write(tmp_path, ""), ["sft.train.epochs=many"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(write(tmp_path, ""), ["sft.train.epochs"])


def test_scientific_notation_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads "1e-5" as a string; a recipe author means a number
    assert load_recipe(write(tmp_path, "sft:\n  train:\n    optim: {lr: 1e-5}\n")).sft.train.optim.lr == 1e-5


def test_show_round_trips_and_hash_tracks_changes():
    recipe = load_recipe(RECIPES / "tiny.yaml")
    import yaml

    again = recipe_from_dict(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe and again.section("sft") == recipe.section("sft")
    again.sft.train.optim.lr *= 2
    assert again.section("sft") != recipe.section("sft")


def test_every_knob_is_documented():
    lines = describe()
    assert any(line.startswith("sft.train.optim.lr = 2e-05") for line in lines)
    assert all(not line.rstrip().endswith(":") for line in lines), [l for l in lines if l.rstrip().endswith(":")]


def test_recipe_formats_match_the_converters():
    import typing

    from data.converters import CONVERSATION_FORMATS, PREFERENCE_FORMATS
    from stages.recipe import DataFormat

    assert set(typing.get_args(DataFormat)) == {"auto", *CONVERSATION_FORMATS, *PREFERENCE_FORMATS}


def test_partial_nested_section_keeps_the_stage_defaults(tmp_path):
    # the reward models' schedule (warmup 3%, min 5 steps, cosine to 10%) survives setting only lr
    recipe = load_recipe(write(tmp_path, "reward:\n  train:\n    optim: {lr: 2.0e-5}\n"))
    train = recipe.reward.train
    assert (train.optim.lr, train.optim.warmup_ratio, train.optim.warmup_min_steps, train.optim.min_lr_ratio) == (
        2e-5, 0.03, 5, 0.1)
    assert (train.epochs, train.batch_size) == (1.0, 512)  # the RM's own training defaults, not the class's
    assert Recipe().sft.train.optim.warmup_min_steps == 0  # and SFT keeps its own
    assert load_recipe(write(tmp_path, "sft:\n  train:\n    batch_size: 8\n")).sft.train.epochs == 2.0


def test_local_file_source_loads(tmp_path):
    import json

    from data.sources import load_conversations
    from stages.recipe import DataSource

    path = tmp_path / "demo.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    records = load_conversations([DataSource(source=str(path))], seed=0, key="sft.data")
    assert records[0].messages[-1]["content"] == "hello"


def test_override_list_items(tmp_path):
    path = write(tmp_path, "sft:\n  data: [{source: builtin, n: 8}, {source: builtin, n: 4}]\n")
    recipe = load_recipe(path, ["sft.data[1].n=16", "sft.data[0].split=heldout"])
    assert [(d.n, d.split) for d in recipe.sft.data] == [(8, "heldout"), (16, "train")]
    with pytest.raises(RecipeError, match="overridden with --set"):
        load_recipe(path, ["sft.data[0].nn=3"])
    with pytest.raises(RecipeError, match=r"no item \[5\]"):
        load_recipe(path, ["sft.data[5].n=3"])


def test_duplicate_keys_and_empty_recipes_are_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"line 4: not valid YAML: key 'epochs' appears twice .*first on line 3"):
        load_recipe(write(tmp_path, "name: x\nsft:\n  epochs: 1\n  epochs: 2\n"))
    # what << merges may be overridden
    merged = "name: x\nsft:\n  train: &b {epochs: 1}\nreward:\n  train:\n    <<: *b\n    epochs: 3\n"
    assert load_recipe(write(tmp_path, merged)).reward.train.epochs == 3.0
    with pytest.raises(RecipeError, match="the recipe is empty"):
        load_recipe(write(tmp_path, "# nothing here\n"))
    with pytest.raises(RecipeError, match="the recipe file is not a mapping"):
        load_recipe(write(tmp_path, "0\n"), ["name=x"])
    with pytest.raises(RecipeError, match="override 'sft.train.optim=\\{lr: \\[\\}': the value is not valid YAML"):
        load_recipe(write(tmp_path, "name: x\n"), ["sft.train.optim={lr: [}"])
