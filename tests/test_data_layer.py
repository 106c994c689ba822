"""Tests of the data layer: converters, loaders, chat templates with loss masks, packing and collation."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.converters import (detect_format, parse_hh_text, to_conversation, to_preference)
from data.loaders import fingerprint_records, load_conversations, load_preferences, write_jsonl
from data.packing import collate, pack_examples
from data.records import Conversation, DataError, Preference
from data.templates import (IGNORE_INDEX, with_default_system, TemplateError, count_targets, encode_conversation,
                            encode_conversations, render, render_prompt)
from stages.tiny import build_tiny_model, build_tiny_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine."}]
HH_CHOSEN = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Knock knock."
HH_REJECTED = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def trained_text(tok, example) -> str:
    return tok.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])


# ---------------------------------------------------------------- converters

def test_messages_row_keeps_meta_and_extra_columns():
    conv = to_conversation({"messages": CHAT, "meta": {"id": "a"}, "source": "x"})
    assert conv.messages == CHAT and conv.meta == {"id": "a", "source": "x"}


@pytest.mark.parametrize("row", [
    {"prompt": "Hi", "completion": "Hello!"},
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]},
])
def test_prompt_completion(row):
    assert detect_format(row) == "prompt_completion"
    assert to_conversation(row).messages == [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]


def test_prompt_only_row_is_a_prompt():
    assert to_conversation({"prompt": "Hi"}).messages == [{"role": "user", "content": "Hi"}]


def test_parse_hh_text():
    assert parse_hh_text("Human: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": ""}]
    with pytest.raises(DataError, match="Human"):
        parse_hh_text("just some text")
    with pytest.raises(DataError, match="start with"):
        parse_hh_text("preamble\n\nHuman: a\n\nAssistant: b")


def test_hh_preference_splits_the_shared_prompt():
    row = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
    assert detect_format(row) == "hh"
    pref = to_preference(row)
    assert pref.prompt[-1] == {"role": "user", "content": "Tell me a joke"} and len(pref.prompt) == 3
    assert (pref.chosen, pref.rejected) == ("Knock knock.", "No.")


def test_hh_preference_with_different_histories_is_an_error():
    row = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("Hi there", "Yo")}
    with pytest.raises(DataError, match="share every turn"):
        to_preference(row, source="hh.jsonl", line=7)


@pytest.mark.parametrize("chosen,rejected", [
    ("Yes.", "No."),
    ([{"role": "assistant", "content": "Yes."}], [{"role": "assistant", "content": "No."}]),
])
def test_prompt_chosen_rejected_with_optional_columns(chosen, rejected):
    row = {"prompt": "Q?", "chosen": chosen, "rejected": rejected, "margin": 2, "rating": "better",
           "chosen_safe": True, "rejected_safe": False}
    pref = to_preference(row)
    assert (pref.prompt, pref.chosen, pref.rejected) == ([{"role": "user", "content": "Q?"}], "Yes.", "No.")
    assert (pref.margin, pref.rating, pref.chosen_safe, pref.rejected_safe) == (2.0, "better", True, False)


def test_rows_with_both_kinds_of_columns_follow_the_loader():
    prompt = [{"role": "user", "content": "Q?"}]
    row = {"prompt": "Q?", "messages": prompt + [{"role": "assistant", "content": "Yes."}],
           "chosen": prompt + [{"role": "assistant", "content": "Yes."}],
           "rejected": prompt + [{"role": "assistant", "content": "No."}]}  # UltraFeedback-style
    assert detect_format(row) == "messages" and detect_format(row, kind="preference") == "prompt_chosen_rejected"
    pref = to_preference(row)
    assert (pref.prompt, pref.chosen, pref.rejected) == (prompt, "Yes.", "No.")
    assert to_conversation(row).messages[-1]["content"] == "Yes."


def test_implicit_prompt_preference():
    prompt = [{"role": "user", "content": "Q?"}]
    row = {"chosen": prompt + [{"role": "assistant", "content": "Yes."}],
           "rejected": prompt + [{"role": "assistant", "content": "No."}]}
    assert detect_format(row) == "implicit_prompt"
    assert to_preference(row).prompt == prompt


def test_own_serialized_forms_round_trip():
    conv = Conversation(messages=CHAT, meta={"id": 1})
    pref = Preference(prompt=CHAT[:2], chosen="a", rejected="b", rating="better", margin=None,
                      chosen_safe=True, meta={"k": "v"})
    assert to_conversation(conv.to_dict()) == conv
    assert to_preference(json.loads(json.dumps(pref.to_dict()))) == pref


@pytest.mark.parametrize("row,field", [
    ({"messages": "hello"}, "messages"),                                        # wrong type
    ({"prompt": "Q?", "chosen": "a"}, None),                                    # missing field: no format fits
    ({"prompt": "Q?", "completion": 5}, "completion"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),     # bad role
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"prompt": "Q?", "chosen": "a", "rejected": "b", "rating": "great"}, "rating"),
    ({"prompt": "Q?", "chosen": "a", "rejected": "b", "margin": True}, "margin"),
    ({"prompt": "Q?", "chosen": "a", "rejected": "b", "chosen_safe": "yes"}, "chosen_safe"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "prompt"),
])
def test_malformed_rows_name_source_line_and_field(row, field):
    convert = to_preference if "chosen" in row or "rating" in row else to_conversation
    with pytest.raises(DataError) as err:
        convert(row, source="f.jsonl", line=4)
    assert err.value.source == "f.jsonl" and err.value.line == 4 and err.value.field_name == field
    assert "f.jsonl, line 4" in str(err.value)


def test_explicit_format_names_the_missing_field():
    with pytest.raises(DataError, match="line 2, field 'completion': missing"):
        to_conversation({"prompt": "Q?"}, format="prompt_completion", source="f.jsonl", line=2)


def test_wrong_kind_of_row_says_so():
    row = {"prompt": "Q?", "chosen": "a", "rejected": "b"}
    with pytest.raises(DataError, match="use load_preferences"):
        to_conversation(row)
    assert to_conversation(row, format="prompt").messages == [{"role": "user", "content": "Q?"}]


# ---------------------------------------------------------------- loaders

def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_and_gz_and_json(tmp_path):
    rows = [{"messages": CHAT}, {"prompt": "Hi", "completion": "Yo"}]
    write_lines(tmp_path / "a.jsonl", [json.dumps(r) for r in rows] + [""])
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    for name in ("a.jsonl", "a.jsonl.gz", "a.json"):
        convs = load_conversations(tmp_path / name)
        assert [c.messages[-1]["content"] for c in convs] == ["Fine.", "Yo"], name
    assert len(load_conversations(tmp_path / "a.jsonl", limit=1)) == 1


def test_load_parquet_and_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "Q?", "chosen": "a", "rejected": "b", "margin": 1.5}]),
                   tmp_path / "p.parquet")
    assert load_preferences(tmp_path / "p.parquet")[0].margin == 1.5
    prompt = json.dumps([{"role": "user", "content": "Q?"}]).replace('"', '""')
    write_lines(tmp_path / "p.csv", ["prompt,chosen,rejected,margin,chosen_safe",
                                     f'"{prompt}",a,b,0.5,true', "[plain,c,d,,"])
    prefs = load_preferences(tmp_path / "p.csv")
    assert prefs[0].prompt == [{"role": "user", "content": "Q?"}] and prefs[0].margin == 0.5
    assert prefs[0].chosen_safe is True and prefs[1].prompt[0]["content"] == "[plain"


def test_bad_json_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"messages": CHAT}), "", "{not json"])
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert err.value.line == 3 and str(path) in str(err.value) and "invalid JSON" in str(err.value)


def test_bad_row_in_the_middle_raises_not_dropped(tmp_path):
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "x"}]}
    path = write_lines(tmp_path / "mid.jsonl", [json.dumps({"messages": CHAT}), json.dumps(bad),
                                                json.dumps({"messages": CHAT})])
    with pytest.raises(DataError, match=r"mid.jsonl, line 2, field 'messages\[1\].role'"):
        load_conversations(path)
    (tmp_path / "mid.json").write_text(json.dumps([{"messages": CHAT}, bad]))
    with pytest.raises(DataError, match=r"mid.json, row 2"):
        load_conversations(tmp_path / "mid.json")
    write_lines(tmp_path / "notobj.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        load_conversations(tmp_path / "notobj.jsonl")


def test_missing_file_and_offline_hub_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="file not found"):
        load_conversations(tmp_path / "nope.jsonl")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="could not load the dataset.*offline"):
        load_preferences("no-such-owner/no-such-dataset", split="train")


def test_saved_dataset_directory_loads(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "Q?", "chosen": "a", "rejected": "b"}]).save_to_disk(tmp_path / "ds")
    assert load_preferences(tmp_path / "ds")[0].chosen == "a"


def test_write_jsonl_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "out" / "convs.jsonl"
    convs = [Conversation(messages=CHAT, meta={"i": i}) for i in range(3)]
    assert write_jsonl(path, convs) == 3
    assert load_conversations(path) == convs
    with pytest.raises(TypeError):  # a row that cannot be serialized mid-way
        write_jsonl(path, [convs[0], {"messages": CHAT, "meta": {"bad": object()}}])
    assert load_conversations(path) == convs  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["convs.jsonl"]  # no temp file left
    write_jsonl(tmp_path / "c.jsonl.gz", convs)
    assert load_conversations(tmp_path / "c.jsonl.gz") == convs


def test_fingerprint_is_canonical_and_order_sensitive():
    a = Preference(prompt=CHAT[:2], chosen="x", rejected="y")
    b = Preference(prompt=CHAT[:2], chosen="x", rejected="z")
    assert fingerprint_records([a, b]) == fingerprint_records([a.to_dict(), dict(reversed(b.to_dict().items()))])
    assert fingerprint_records([a, b]) != fingerprint_records([b, a])
    assert fingerprint_records([a]) != fingerprint_records([b])


# ---------------------------------------------------------------- templates

def test_model_template_trains_only_assistant_turns(tok):
    example = encode_conversation(tok, CHAT)
    assert trained_text(tok, example) == "Hello!<|im_end|>\nFine.<|im_end|>\n"
    last = encode_conversation(tok, CHAT, train_on="last_assistant")
    assert trained_text(tok, last) == "Fine.<|im_end|>\n"
    assert last["input_ids"] == example["input_ids"]


def test_changing_a_prompt_token_leaves_labels_unchanged(tok):
    base = encode_conversation(tok, CHAT)
    edited_chat = [dict(m) for m in CHAT]
    edited_chat[3]["content"] = "How are yoU?"  # same length, different token
    edited = encode_conversation(tok, edited_chat)
    assert edited["input_ids"] != base["input_ids"] and edited["labels"] == base["labels"]
    text, spans = render(tok, CHAT)
    prompt_end = spans[0][0]
    assert all(label == IGNORE_INDEX for label in base["labels"][:len(tok(text[:prompt_end])["input_ids"])])


def test_llama2_rendering_matches_the_released_format(tok):
    text, _ = render(tok, CHAT, template="llama2")
    assert text == ("<|im_start|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! <|im_end|>"
                    "<|im_start|>[INST] How are you? [/INST] Fine. <|im_end|>")
    example = encode_conversation(tok, CHAT, template="llama2")
    assert trained_text(tok, example) == "Hello! <|im_end|>Fine. <|im_end|>"
    prompt = render_prompt(tok, CHAT[:4], template="llama2")
    assert prompt.text == text[:text.index(" Fine.")] and prompt.input_ids == tok(prompt.text)["input_ids"]
    with pytest.raises(TemplateError, match="alternating"):
        render(tok, [CHAT[1], CHAT[1]], template="llama2")
    with pytest.raises(TemplateError, match="at least one user turn"):
        render(tok, CHAT[:1], template="llama2")


def test_render_prompt_model_template(tok):
    prompt = render_prompt(tok, CHAT[:4])
    assert prompt.text.endswith("How are you?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(DataError, match="last message"):
        render_prompt(tok, CHAT)


def test_default_system_prompt_replaces_the_templates_own(tok):
    """model.system_prompt: a conversation without a system message renders with the given one, never with
    the template's built-in default (SmolLM2's); one with a system message is unchanged; masks still work."""
    smollm_like = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}{% endif %}"
                   "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok2 = build_tiny_tokenizer()
    tok2.chat_template = with_default_system(smollm_like, "")
    text, _ = render(tok2, CHAT[1:3])
    assert text == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert render(tok2, CHAT)[0] == render(tok, CHAT)[0]  # its own system message wins
    assert trained_text(tok2, encode_conversation(tok2, CHAT[1:])) == "Hello!<|im_end|>\nFine.<|im_end|>\n"
    tok2.chat_template = with_default_system(smollm_like, 'Say "it\'s" {{ x }}\n')  # quotes and braces stay text
    assert render_prompt(tok2, CHAT[1:2]).text.startswith('<|im_start|>system\nSay "it\'s" {{ x }}\n<|im_end|>')


def test_template_that_is_not_prefix_stable_is_rejected(tok):
    tok2 = build_tiny_tokenizer()
    # Drops earlier assistant replies, as templates that strip past reasoning do.
    tok2.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                          "{{ m['role'] + ':' + m['content'] + '\n' }}{% endif %}{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    with pytest.raises(TemplateError, match="not prefix-stable"):
        encode_conversation(tok2, CHAT)


def test_truncation_is_flagged_and_untrainable_examples_reported(tok):
    full = encode_conversation(tok, CHAT)
    cut = encode_conversation(tok, CHAT, max_length=10)
    assert cut["truncated"] and cut["input_ids"] == full["input_ids"][:10] and count_targets(cut["labels"]) == 0
    examples, report = encode_conversations(tok, [Conversation(CHAT), CHAT], max_length=10)
    assert examples == [] and report.untrainable == [0, 1] and report.truncated == 2
    examples, report = encode_conversations(tok, [CHAT, CHAT[:2]], max_length=1000)
    assert report.kept == 1 and report.untrainable == [1] and report.truncated == 0
    with pytest.raises(TemplateError, match="conversation 0 has no token to train on"):
        encode_conversations(tok, [CHAT], max_length=10, on_untrainable="error")


text_st = st.text(alphabet="ab é\n<>|🙂", max_size=12)


@FAST
@given(turns=st.lists(st.tuples(text_st, text_st), min_size=1, max_size=3), system=st.none() | text_st)
def test_trained_tokens_are_exactly_the_assistant_replies(tok, turns, system):
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    example = encode_conversation(tok, messages)
    assert trained_text(tok, example) == "".join(a + "<|im_end|>\n" for _, a in turns)
    llama = encode_conversation(tok, messages, template="llama2")
    assert trained_text(tok, llama) == "".join(a.strip() + " <|im_end|>" for _, a in turns)


# ---------------------------------------------------------------- packing

examples_st = st.lists(st.integers(1, 16), min_size=1, max_size=12).map(
    lambda lengths: [{"input_ids": [1000 * i + t for t in range(n)], "labels": [1000 * i + t for t in range(n)]}
                     for i, n in enumerate(lengths)])


@FAST
@given(examples=examples_st, seq_len=st.integers(16, 40), seed=st.none() | st.integers(0, 3))
def test_packing_keeps_every_token_once_and_restarts_positions(examples, seq_len, seed):
    packs = pack_examples(examples, seq_len, shuffle_seed=seed)
    seen = []
    for pack in packs:
        assert len(pack["input_ids"]) == len(pack["labels"]) == len(pack["position_ids"]) <= seq_len
        for t, (tok_id, label, pos) in enumerate(zip(pack["input_ids"], pack["labels"], pack["position_ids"])):
            assert pos == tok_id % 1000  # each example's positions run 0, 1, 2, ... from its first token
            assert label == (IGNORE_INDEX if pos == 0 else tok_id)  # first token of an example is no target
            seen.append(tok_id)
    assert sorted(seen) == sorted(t for e in examples for t in e["input_ids"])


def test_packing_rejects_examples_longer_than_seq_len():
    with pytest.raises(ValueError, match="example 1: 5 tokens"):
        pack_examples([{"input_ids": [1], "labels": [1]}, {"input_ids": [1] * 5, "labels": [1] * 5}], 4)


def test_collate_packed_and_padded():
    packed = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
                      {"input_ids": [8], "labels": [-100], "position_ids": [0]}], pad_token_id=0)
    assert packed["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert packed["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert packed["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert packed["use_cache"] is False and "attention_mask" not in packed
    plain = collate([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [8], "labels": [8]}], 0)
    assert plain["attention_mask"].tolist() == [[1, 1], [1, 0]] and plain["labels"].tolist() == [[-100, 6], [8, -100]]
    with pytest.raises(ValueError, match="all examples packed"):
        collate([{"input_ids": [1], "labels": [1], "position_ids": [0]}, {"input_ids": [1], "labels": [1]}], 0)


def test_packed_examples_do_not_attend_to_each_other(tok):
    model = build_tiny_model(tok).eval()
    examples, _ = encode_conversations(tok, [CHAT, CHAT[1:3]])
    packs = pack_examples(examples, seq_len=sum(len(e["input_ids"]) for e in examples) + 3)
    assert len(packs) == 1
    batch = collate(packs, tok.pad_token_id)
    with torch.no_grad():
        packed_out = model(**batch)
        starts = [0] + [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0][1:]
        alone_losses, alone_counts = [], []
        for start, example in zip(starts, examples):  # members of a pack keep data order
            alone = model(**collate([example], tok.pad_token_id))
            n = len(example["input_ids"])
            torch.testing.assert_close(packed_out.logits[0, start:start + n], alone.logits[0], atol=1e-5, rtol=0)
            alone_losses.append(alone.loss)
            alone_counts.append(count_targets(example["labels"]))
        weighted = sum(loss * n for loss, n in zip(alone_losses, alone_counts)) / sum(alone_counts)
        torch.testing.assert_close(packed_out.loss, weighted, atol=1e-5, rtol=0)
        # Control: with a KV cache transformers ignores position_ids for masking, and the test sees the leak.
        leaky = model(**{**batch, "use_cache": True})
        assert not torch.allclose(leaky.logits, packed_out.logits, atol=1e-3)



def test_phase_times_count_nested_phases_once_under_their_path(monkeypatch):
    """data.runtime.phase: inner time goes to "outer/inner" and not again to "outer"; a phase reopened
    inside itself is one phase; the times add up to the time spent inside."""
    import data.runtime as runtime

    clock = iter([0.0, 1.0, 3.0, 3.5, 3.5, 4.0, 4.0, 10.0, 12.0, 12.0, 13.0, 13.0])
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock))
    runtime.phase_times(reset=True)
    with runtime.phase("evaluation"):          # enters at 0
        with runtime.phase("sampling"):        # 1 .. 3 (the outer gets 0..1)
            pass
        with runtime.phase("evaluation"):      # same phase: nothing new opens
            pass
    # evaluation resumes at 3 (after sampling) and closes at 3.5
    with runtime.phase("training"):            # 3.5 .. 4.0
        pass
    assert runtime.phase_times(reset=True) == {"evaluation/sampling": 2.0, "evaluation": 1.5, "training": 0.5}
    assert runtime.phase_times() == {}
