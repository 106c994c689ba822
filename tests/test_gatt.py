"""Stage 4 (GAtt): instructions and terse rewriting, every checker and enforcing program on labelled
examples, the choice of targets, the training conversation's loss mask (only the last answer; the
instruction once, in the system message), the Table 30 evaluation, and the stage end to end on the tiny
recipe with resume after an interruption."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data.builtin.gatt import STYLES, check_constraint, make_constraint
from data.gatt_synthesis import (DEFAULT_LISTS, answers_probe, builtin_dialogues, choose_target, enforce,
                                 first_sentences, sample_instruction, sampling_messages, terse_form,
                                 training_messages)
from data.templates import IGNORE_INDEX, encode_conversation
from eval.gatt import adherence, eval_instructions, format_table30
from stages.tiny import build_tiny_tokenizer

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def style(value: str) -> dict[str, str]:
    return make_constraint("style", value, random.Random(0))


# --- instructions ---------------------------------------------------------------------------------

def test_terse_rewriting_gives_the_papers_short_forms():
    rng = random.Random(0)
    napoleon, french = make_constraint("figure", "Napoleon", rng), make_constraint("language", "French", rng)
    assert napoleon["terse"] == "Figure: Napoleon." and french["terse"] == "Language: French."
    assert napoleon["instruction"] in ("Always answer as if you were Napoleon.", "Act as Napoleon.")
    assert terse_form([napoleon, style("all_caps")]) == "Figure: Napoleon. Style: all caps."


def test_instructions_combine_families_at_random_and_half_are_terse():
    lists = {k: list(v) for k, v in DEFAULT_LISTS.items()}
    instructions = [sample_instruction(random.Random(i), lists, ("hobby", "language", "figure"), 2, 0.5, 0.5)
                    for i in range(400)]
    assert all(1 <= len(inst.constraints) <= 2 for inst in instructions)
    assert all(len({c["type"] for c in inst.constraints}) == len(inst.constraints) for inst in instructions)
    assert 0.4 < sum(inst.terse for inst in instructions) / 400 < 0.6
    assert 0.4 < sum(any(c["type"] == "style" for c in inst.constraints) for inst in instructions) / 400 < 0.6
    assert any(len(inst.constraints) == 2 for inst in instructions)
    # a language comes alone or with a hobby or figure, never with a checkable style
    types = [{c["type"] for c in inst.constraints} for inst in instructions]
    assert not any({"style", "language"} <= t for t in types) and any("language" in t for t in types)
    for inst in instructions[:20]:
        key = "terse" if inst.terse else "instruction"
        assert inst.text == " ".join(c[key] for c in inst.constraints)
    # a recipe's own lists replace the built-in ones
    own = sample_instruction(random.Random(1), {"hobby": ["juggling"]}, ("hobby",), 1, 0.0, 0.0)
    assert own.constraints[0]["value"] == "juggling" and "juggling" in own.text


# --- checkers and programs on labelled examples -----------------------------------------------------

LABELLED = [  # (style, answer, keeps it)
    ("one_sentence", "Paris is the capital of France.", True),
    ("one_sentence", "Paris is the capital. It is big.", False),
    ("one_sentence", "Paris is the capital\nof France.", False),
    ("all_caps", "PARIS IS THE CAPITAL OF FRANCE, 2 MILLION PEOPLE.", True),
    ("all_caps", "Paris is the capital.", False),
    ("all_lowercase", "paris is the capital of france.", True),
    ("all_lowercase", "Paris is the capital of France.", False),
    ("short", "The capital of France is Paris.", True),
    ("short", "The capital of France is Paris, a large city on the Seine with many museums.", False),
    ("haiku", "Paris in spring rain\nthe river carries the light\ncapital of France", True),
    ("haiku", "Paris in spring rain, the river carries the light.", False),
    ("start_indeed", "Indeed, the capital is Paris.", True),
    ("start_indeed", "The capital is Paris, indeed.", False),
]


@pytest.mark.parametrize("value,text,ok", LABELLED)
def test_every_style_checker_on_labelled_answers(value, text, ok):
    assert check_constraint(style(value), text) is ok


def test_the_labelled_examples_cover_every_style():
    assert {v for v, _, ok in LABELLED if ok} == {v for v, _, ok in LABELLED if not ok} == set(STYLES)


@pytest.mark.parametrize("value", sorted(STYLES))
def test_every_enforcing_program_makes_a_failing_answer_keep_its_style(value):
    answer = ("Paris is the capital of France and its largest city by far. It lies on the Seine river, "
              "with many museums.")
    fixed = enforce([style(value)], answer)
    assert fixed and check_constraint(style(value), fixed) is True, fixed


def test_enforcing_keeps_combined_styles_and_gives_up_on_a_language():
    rng = random.Random(0)
    both = [style("all_caps"), style("start_indeed")]
    fixed = enforce(both, "Paris is the capital.")
    assert fixed == "INDEED, PARIS IS THE CAPITAL." and all(check_constraint(c, fixed) for c in both)
    french = make_constraint("language", "French", rng)
    assert enforce([french], "Paris is the capital of France.") is None
    assert enforce([french], "La capitale de la France est Paris, et je suis très content.") is not None
    hobby = make_constraint("hobby", "tennis", rng)
    assert enforce([hobby], "Anything.") == "Anything."  # nothing to check, nothing rewritten


def test_first_sentences_drops_an_unfinished_tail():
    assert first_sentences("One. Two!  Three? Four", 2) == "One. Two!"
    assert first_sentences("One. Two is cut", 5) == "One."
    assert first_sentences("Only a fragment", 2) == "Only a fragment"
    assert first_sentences("a\n b", None) == "a b"


def test_targets_prefer_a_kept_sample_by_reward_then_enforce():
    caps = [style("all_caps")]
    samples = ["Paris is big.", "PARIS IS BIG.", "LYON IS BIG."]
    target = choose_target(caps, samples, [5.0, 1.0, 2.0], [True, True, True], None, "best_of_k_then_enforce")
    assert (target.text, target.how, target.sample) == ("LYON IS BIG.", "kept", 2)  # best reward among kept
    target = choose_target(caps, samples[:1], [5.0], [True], None, "best_of_k_then_enforce")
    assert (target.text, target.how) == ("PARIS IS BIG.", "enforced")
    assert choose_target(caps, samples[:1], [5.0], [True], None, "best_of_k").text is None
    assert choose_target(caps, samples, [0.0] * 3, [False] * 3, None, "best_of_k_then_enforce").text is None
    hobby = [make_constraint("hobby", "chess", random.Random(0))]
    assert choose_target(hobby, ["a", "b"], [0.0, 1.0], [True, True], None, "best_of_k").how == "unchecked"


# --- the training conversation and its loss mask ------------------------------------------------------

def test_sampling_adds_the_instruction_to_every_user_turn():
    messages = sampling_messages("Style: all caps.", ["Hi?", "And then?"], ["HELLO."])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert all(m["content"].startswith("Style: all caps.") for m in messages if m["role"] == "user")


def test_gatt_loss_mask_trains_only_the_final_answer_and_the_instruction_appears_once():
    tok = build_tiny_tokenizer()
    instruction = "Always answer in all capital letters."
    users, answers = ["What is 2+2?", "Capital of Peru?", "Name a color."], ["FOUR.", "LIMA.", "BLUE."]
    messages = training_messages(instruction, users, answers)
    assert messages[0] == {"role": "system", "content": instruction}
    assert sum(instruction in m["content"] for m in messages) == 1
    example = encode_conversation(tok, messages, template="model", train_on="last_assistant")
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "BLUE.<|im_end|>\n"  # the last answer and its end of turn, nothing else
    text = tok.decode(example["input_ids"])
    assert text.count(instruction) == 1 and text.index(instruction) < text.index("What is 2+2?")
    assert all(a in text for a in answers)  # earlier answers are context, with zero loss


def test_the_stage_builds_one_conversation_per_turn(monkeypatch):
    from stages import gatt

    rows = [{"index": 0, "instruction": {"text": "Style: haiku."}, "turns": [
        {"user": "a?", "answer": "A."}, {"user": "b?", "answer": "B."}]}]
    conversations = gatt.training_conversations(rows, "all")
    assert [len(c.messages) for c in conversations] == [3, 5]
    assert all(c.messages[0]["role"] == "system" and c.messages[-1]["role"] == "assistant" for c in conversations)
    assert [len(c.messages) for c in gatt.training_conversations(rows, "last")] == [5]


def test_builtin_dialogues_have_the_asked_turns_and_no_form_instruction():
    dialogues = builtin_dialogues("train", 5, 0, 4)
    assert len(dialogues) == 5 and all(len(d) == 4 for d in dialogues)
    assert len({q for d in dialogues for q in d}) == 20
    assert builtin_dialogues("train", 5, 0, 4) == dialogues


def test_recipe_chat_data_gives_its_user_turns(tmp_path):
    from data.gatt_synthesis import load_dialogues
    from data.records import DataError
    from stages.recipe import DataSource

    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}{t}"} if k == 0 else
                          {"role": "assistant", "content": "a"} for t in range(3) for k in range(2)]}
            for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "one turn only"}, {"role": "assistant", "content": "a"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dialogues = load_dialogues([DataSource(source=str(path))], 0, "gatt.dialogues", turns=2)
    assert dialogues == [["q00", "q01"], ["q10", "q11"], ["q20", "q21"]]
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps(rows[-1]) + "\n")
    with pytest.raises(DataError, match="2 or more user turns"):
        load_dialogues([DataSource(source=str(single))], 0, "gatt.dialogues", turns=2)


# --- evaluation ----------------------------------------------------------------------------------

def test_probes_name_the_hobby_or_figure():
    rng = random.Random(0)
    assert answers_probe(make_constraint("hobby", "playing the guitar", rng), "I love my guitar!")
    assert answers_probe(make_constraint("figure", "Marie Curie", rng), "I am Curie, the physicist.")
    assert not answers_probe(make_constraint("figure", "Marie Curie", rng), "I am an AI assistant.")


def test_adherence_per_turn_in_the_layout_of_table_30():
    lists = {"style": ["all_caps"], "hobby": ["chess"]}
    instructions = eval_instructions(lists, 4, 0, families=("style", "hobby"))
    assert [i["constraint"]["type"] for i in instructions] == ["style", "hobby", "style", "hobby"]
    turns = 3

    def respond(conversations):
        out = []
        for messages in conversations:
            system, asked = messages[0]["content"], messages[-1]["content"]
            n_user = sum(m["role"] == "user" for m in messages)
            if asked == "What is your favourite hobby?":
                out.append("Chess, of course." if n_user <= 2 else "Reading.")  # forgets after turn 1
            elif "caps" in system.lower() or "capital" in system.lower():
                out.append("OK SURE." if n_user <= 2 else "ok sure.")  # keeps it for two turns
            else:
                out.append("fine")
        return out

    calls = []

    def counted(conversations):
        calls.append(len(conversations))
        return respond(conversations)

    result = adherence(counted, instructions, [["a", "b", "c"]] * 4, turns)
    assert result["kept"]["style"] == [1.0, 1.0, 0.0] and result["kept"]["hobby"] == [1.0, 0.0, 0.0]
    assert result["kept"]["checkable"] == result["kept"]["style"]  # the styles; a language has its own column
    assert calls == [4, 6, 6, 2]  # each turn's probes ride with the next turn's answers: N + 1 calls
    assert all("probe_answer" in t for r in result["dialogues"] for t in r["turns"])
    table = format_table30(result, result)
    lines = table.splitlines()
    assert lines[0].startswith("| turn |") and len(lines) == 2 + turns and lines[2].startswith("| 1 | 100%")

    mixed = eval_instructions({"style": list(STYLES), "hobby": ["chess"], "figure": ["Napoleon"]}, 8, 0,
                              families=("style", "hobby", "figure"), style_share=0.75)
    assert [i["constraint"]["type"] for i in mixed].count("style") == 6
    assert len({i["constraint"]["value"] for i in mixed[:6]}) == 6  # every style measured


# --- the stage end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_stage_4_end_to_end_and_resume_after_an_interruption(tmp_path, monkeypatch):
    from stages import base, gatt, reward_models, sft
    from stages.common import open_registry
    from stages.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    overrides = [f"runs_dir={tmp_path / 'runs'}", "sft.train.max_steps=2", "reward.train.max_steps=2",
                 "sft.heldout=[{source: builtin, n: 8, split: heldout}]", "gatt.policy=sft@latest",
                 "gatt.eval_dialogues=4", "gatt.eval_turns=2"]
    recipe = load_recipe(RECIPE, overrides=overrides)
    registry = open_registry(recipe)
    base.run(recipe, registry)
    sft.run(recipe, registry)
    reward_models.run(recipe, registry)

    sampled = []
    sample_answers = gatt.sample_answers

    def counting(*args, **kwargs):
        sampled.append(kwargs["stream"])
        return sample_answers(*args, **kwargs)

    monkeypatch.setattr(gatt, "sample_answers", counting)
    fine_tune = gatt.fine_tune
    monkeypatch.setattr(gatt, "fine_tune", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        gatt.run(recipe, registry)
    assert sampled and "gatt" not in registry.stages() or not registry.versions("gatt")
    before = list(sampled)
    monkeypatch.setattr(gatt, "fine_tune", fine_tune)
    (version,) = gatt.run(recipe, registry, resume=True)
    assert sampled == before  # the resumed run reused the synthesized dialogues
    assert version.id == "gatt/v1"
    rows = [json.loads(line) for line in (version.path / gatt.DIALOGUES_FILE).read_text().splitlines()]
    assert len(rows) == 6 and all(r["instruction"]["text"] for r in rows)
    for row in rows:
        for turn in row["turns"]:
            assert turn["how"] in ("kept", "enforced", "unchecked")
            assert len(turn["samples"]) == recipe.gatt.samples_per_turn
            assert all(check_constraint(c, turn["answer"]) is not False for c in row["instruction"]["constraints"])
    summary = version.manifest["gatt"]
    assert summary["dialogues"] == 6 and summary["yield"] and summary["training_conversations"] > 0
    assert (version.path / gatt.TABLE_FILE).read_text().startswith("| turn |")
    evaluation = json.loads((version.path / gatt.EVAL_FILE).read_text())
    assert evaluation["before"]["turns"] == evaluation["after"]["turns"] == 2
    assert [p["id"] for p in version.manifest["parents"]] == ["sft/v1", "rm-helpful/v1", "rm-safety/v1"]


def test_the_before_evaluation_is_cached_by_policy_and_settings(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from stages import gatt
    from stages.recipe import load_recipe
    from stages.registry import Registry

    recipe = load_recipe(RECIPE)
    registry = Registry(tmp_path / "runs" / "tiny")
    (registry.root / "sft" / "v1").mkdir(parents=True)
    policy = SimpleNamespace(path=tmp_path, id="sft/v1", content_hash="abc")
    calls = []
    monkeypatch.setattr(gatt, "load_causal_lm", lambda *a, **k: SimpleNamespace(to=lambda device: None))
    monkeypatch.setattr(gatt, "load_tokenizer", lambda *a, **k: None)
    monkeypatch.setattr(gatt, "evaluate", lambda *a, **k: calls.append(1) or {"kept": {"style": [0.5]}})
    lists = {"style": ["all_caps"]}
    for i in range(2):
        work = tmp_path / f"work{i}"
        work.mkdir()
        result = gatt.before_eval(SimpleNamespace(workdir=work, resume=False, registry=registry), recipe, policy,
                                  lists)
        assert result["kept"] == {"style": [0.5]} and (work / gatt.BEFORE_FILE).exists()
    assert calls == [1]  # the second run read the cache
    assert registry.stages() == []  # the cache folder is no stage
    other = SimpleNamespace(path=tmp_path, id="sft/v2", content_hash="def")
    gatt.before_eval(SimpleNamespace(workdir=tmp_path / "work0", resume=False, registry=registry), recipe, other,
                     lists)
    assert calls == [1, 1]  # another policy is evaluated
