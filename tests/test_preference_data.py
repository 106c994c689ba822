"""Tests of the rated preference sources (PandaLM, PKU-SafeRLHF, UltraFeedback, HH harmless) and of the
reward-model mixtures."""
from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from data.converters import PREFERENCE_FORMATS, agreement_rating, detect_format, to_conversation, to_preference
from data.loaders import load_preferences
from data.mixtures import build_rm_mixtures, is_unsafe_chosen
from data.records import RATINGS, DataError, Preference

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
PANDALM_FILE = SHARED_DATA / "pandalm-testset" / "testset-v1.json"
HH_HARMLESS_FILE = SHARED_DATA / "hh-rlhf-harmless" / "test.rows0-1599.jsonl.gz"


def pandalm_row(*votes: int, text_input: str = "") -> dict:
    row = {"idx": 7, "cmp_key": "a_b", "instruction": "Shorten the sentence.", "input": text_input,
           "response1": "first answer", "response2": "second answer"}
    row.update({f"annotator{i + 1}": v for i, v in enumerate(votes)})
    return row


# ---------------------------------------------------------------- PandaLM

# Sorted votes of 3 annotators -> (chosen response, rating); None = a tie (no chosen answer).
PANDALM_3 = {
    (1, 1, 1): (1, "significantly_better"), (2, 2, 2): (2, "significantly_better"),
    (0, 1, 1): (1, "better"), (0, 2, 2): (2, "better"),
    (1, 1, 2): (1, "slightly_better"), (1, 2, 2): (2, "slightly_better"),
    (0, 0, 1): (1, "negligibly_better"), (0, 0, 2): (2, "negligibly_better"),
    (0, 0, 0): None, (0, 1, 2): None,
}


@pytest.mark.parametrize("votes", list(itertools.product((0, 1, 2), repeat=3)))
def test_pandalm_every_agreement_pattern_of_three_annotators(votes):
    expected = PANDALM_3[tuple(sorted(votes))]
    pref = to_preference(pandalm_row(*votes), format="pandalm")
    if expected is None:
        assert pref is None
        return
    chosen_id, rating = expected
    assert pref.rating == rating
    assert pref.chosen == ("first answer" if chosen_id == 1 else "second answer")
    assert pref.rejected == ("second answer" if chosen_id == 1 else "first answer")
    assert pref.meta["chosen_response"] == f"response{chosen_id}"
    assert pref.meta["annotator_votes"] == list(votes)


@pytest.mark.parametrize("votes", [(0, 0, 0), (0, 1, 2), (2, 1, 0)])
def test_pandalm_ties_kept_only_on_request(votes):
    assert to_preference(pandalm_row(*votes)) is None  # auto-detected, ties dropped by default
    pref = to_preference(pandalm_row(*votes), format="pandalm_keep_ties")
    assert (pref.chosen, pref.rating, pref.meta["tie"]) == ("first answer", "negligibly_better", True)


def test_pandalm_other_annotator_counts():
    assert to_preference(pandalm_row(2)).rating == "significantly_better"
    assert to_preference(pandalm_row(1, 1, 2, 2)) is None  # no side has more votes
    assert to_preference(pandalm_row(1, 1, 1, 0, 2)).rating == "slightly_better"  # 3 of 5, one against
    assert to_preference(pandalm_row(1, 1, 1, 0, 0)).rating == "better"
    assert to_preference(pandalm_row(1, 1, 0, 0, 2)).rating == "negligibly_better"  # leads without a majority
    assert agreement_rating(4, 0, 0) == "significantly_better"
    with pytest.raises(ValueError):
        agreement_rating(1, 1, 1)


def test_pandalm_prompt_meta_and_detection():
    row = pandalm_row(2, 2, 0, text_input="A very long sentence.")
    assert detect_format(row) == "pandalm"
    pref = to_preference(row)
    assert pref.prompt == [{"role": "user", "content": "Shorten the sentence.\n\nA very long sentence."}]
    assert pref.meta["idx"] == 7 and pref.meta["cmp_key"] == "a_b"
    assert not any(k.startswith("annotator") and k != "annotator_votes" for k in pref.meta)
    assert to_preference(pandalm_row(1, 1, 1)).prompt[0]["content"] == "Shorten the sentence."
    assert to_preference({**pandalm_row(1, 1, 1), "response1": True}).chosen == "True"  # as in PandaLM's file
    blank_instruction = {**pandalm_row(1, 1, 1, text_input="Truth"), "instruction": " "}  # as in PandaLM's file
    assert to_preference(blank_instruction).prompt[0]["content"] == "Truth"
    with pytest.raises(DataError, match="load_preferences"):
        to_conversation(row)


@pytest.mark.parametrize("change, field", [
    ({"annotator2": 3}, "annotator2"), ({"annotator3": True}, "annotator3"), ({"annotator1": "x"}, "annotator1"),
    ({"response2": None}, "response2"), ({"response1": ["a"]}, "response1"), ({"response2": {}}, "response2"),
    ({"instruction": "  ", "input": ""}, "instruction"),
    ({"input": 5}, "input"),
])
def test_pandalm_malformed_rows_name_the_field(change, field):
    row = {**pandalm_row(1, 1, 2), **change}
    with pytest.raises(DataError) as err:
        to_preference(row, format="pandalm", source="panda.json", line=4)
    assert (err.value.source, err.value.line, err.value.field_name) == ("panda.json", 4, field)


def test_pandalm_without_annotators_names_annotator1():
    with pytest.raises(DataError) as err:
        to_preference(pandalm_row(), format="pandalm")
    assert err.value.field_name == "annotator1"


def test_pandalm_loader_drops_ties_and_counts_limit_on_kept_rows(tmp_path):
    rows = [pandalm_row(0, 0, 0), pandalm_row(1, 1, 1), pandalm_row(0, 1, 2), pandalm_row(2, 2, 1)]
    (tmp_path / "panda.json").write_text(json.dumps(rows))
    assert [p.rating for p in load_preferences(tmp_path / "panda.json")] == ["significantly_better",
                                                                             "slightly_better"]
    assert len(load_preferences(tmp_path / "panda.json", format="pandalm_keep_ties")) == 4
    assert len(load_preferences(tmp_path / "panda.json", limit=1)) == 1
    rows[2]["annotator1"] = 9
    (tmp_path / "panda.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"row 3, field 'annotator1'"):
        load_preferences(tmp_path / "panda.json")


# ---------------------------------------------------------------- PKU-SafeRLHF

def pku_row(better: int = 0, safer: int = 1, safe0: bool = False, safe1: bool = True) -> dict:
    return {"prompt": "How do I pick a lock?", "response_0": "Here is how ...", "response_1": "I can't help.",
            "better_response_id": better, "safer_response_id": safer, "is_response_0_safe": safe0,
            "is_response_1_safe": safe1, "response_0_severity_level": 2, "prompt_source": "test"}


def test_pku_helpful_and_safety_views_of_one_row():
    helpful = to_preference(pku_row(), format="pku_helpful")
    assert (helpful.chosen, helpful.rejected, helpful.rating) == ("Here is how ...", "I can't help.", None)
    assert (helpful.chosen_safe, helpful.rejected_safe) == (False, True)  # the mixtures drop it
    assert is_unsafe_chosen(helpful)
    safety = to_preference(pku_row(), format="pku_safety")
    assert (safety.chosen, safety.rejected) == ("I can't help.", "Here is how ...")
    assert (safety.chosen_safe, safety.rejected_safe, safety.rating) == (True, False, "significantly_better")
    for pref in (helpful, safety):
        assert pref.prompt == [{"role": "user", "content": "How do I pick a lock?"}]
        assert pref.meta["safety_bin"] == "one_safe"
        assert pref.meta["response_0_severity_level"] == 2 and pref.meta["prompt_source"] == "test"
    assert "safer_response_id" in helpful.meta and "better_response_id" in safety.meta


@pytest.mark.parametrize("safe0, safe1, safer, bin_, rating", [
    (True, True, 0, "both_safe", "negligibly_better"),
    (False, False, 1, "both_unsafe", "slightly_better"),
    (True, False, 0, "one_safe", "significantly_better"),
    (False, True, 1, "one_safe", "significantly_better"),
    (True, False, 1, "one_safe", None),  # the "safer" answer is the unsafe one: conflicting labels
])
def test_pku_safety_bins_and_ratings(safe0, safe1, safer, bin_, rating):
    pref = to_preference(pku_row(safer=safer, safe0=safe0, safe1=safe1), format="pku_safety")
    assert (pref.meta["safety_bin"], pref.rating) == (bin_, rating)
    assert pref.meta.get("label_conflict", False) == (rating is None)
    assert (pref.chosen_safe, pref.rejected_safe) == ((safe0, safe1) if safer == 0 else (safe1, safe0))


def test_pku_needs_a_view():
    with pytest.raises(DataError, match="pku_helpful.*pku_safety"):
        to_preference(pku_row())


@pytest.mark.parametrize("fmt, change, field", [
    ("pku_helpful", {"better_response_id": 2}, "better_response_id"),
    ("pku_safety", {"safer_response_id": None}, "safer_response_id"),
    ("pku_safety", {"is_response_1_safe": "yes"}, "is_response_1_safe"),
    ("pku_helpful", {"is_response_0_safe": 1}, "is_response_0_safe"),
    ("pku_helpful", {"response_1": 3}, "response_1"),
    ("pku_safety", {"prompt": ""}, "prompt"),
])
def test_pku_malformed_rows_name_the_field(fmt, change, field):
    with pytest.raises(DataError) as err:
        to_preference({**pku_row(), **change}, format=fmt, source="pku.jsonl", line=9)
    assert (err.value.source, err.value.line, err.value.field_name) == ("pku.jsonl", 9, field)


def test_pku_csv_cells_are_read(tmp_path):
    (tmp_path / "pku.csv").write_text("prompt,response_0,response_1,better_response_id,safer_response_id,"
                                      "is_response_0_safe,is_response_1_safe\nq,a,b,1,0,true,false\n")
    pref = load_preferences(tmp_path / "pku.csv", format="pku_safety")[0]
    assert (pref.chosen, pref.chosen_safe, pref.rejected_safe) == ("a", True, False)


# ---------------------------------------------------------------- UltraFeedback

def uf_row(score_chosen: float, score_rejected: float) -> dict:
    prompt = "Name a prime."
    return {"prompt": prompt, "prompt_id": "p1",
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "7"}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "8"}],
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "7"}],
            "score_chosen": score_chosen, "score_rejected": score_rejected}


@pytest.mark.parametrize("chosen, rejected, rating", [
    (10, 1, "significantly_better"), (8, 4, "significantly_better"), (7.5, 4, "better"), (6, 4, "better"),
    (5.5, 4, "slightly_better"), (5, 4, "slightly_better"), (4.5, 4, "negligibly_better"),
    (8.3, 8.2, "negligibly_better"), (4, 4, None), (3, 4, None),
])
def test_ultrafeedback_rating_from_score_gap(chosen, rejected, rating):
    row = uf_row(chosen, rejected)
    assert detect_format(row) == "ultrafeedback"
    pref = to_preference(row)
    if rating is None:
        assert pref is None  # no gap, or the "chosen" scores lower: no preference to learn
        return
    assert (pref.prompt, pref.chosen, pref.rejected) == ([{"role": "user", "content": "Name a prime."}], "7", "8")
    assert pref.rating == rating
    assert pref.meta["score_gap"] == round(chosen - rejected, 6) and pref.meta["prompt_id"] == "p1"


def test_ultrafeedback_ties_on_request_and_sft_view():
    pref = to_preference(uf_row(6, 6), format="ultrafeedback_keep_ties")
    assert (pref.rating, pref.meta["tie"]) == ("negligibly_better", True)
    assert to_preference(uf_row(3, 6), format="ultrafeedback_keep_ties") is None
    assert detect_format(uf_row(9, 2), kind="conversation") == "messages"
    assert to_preference({**uf_row(9, 2), "rating": "better"}).rating == "better"  # the row's own rating wins


@pytest.mark.parametrize("change, field", [
    ({"score_chosen": "high"}, "score_chosen"), ({"score_rejected": float("nan")}, "score_rejected"),
    ({"score_chosen": True}, "score_chosen"), ({"chosen": 5}, "chosen"),
])
def test_ultrafeedback_malformed_rows_name_the_field(change, field):
    with pytest.raises(DataError) as err:
        to_preference({**uf_row(8, 3), **change}, format="ultrafeedback", source="uf.parquet, row 2")
    assert (err.value.source, err.value.field_name) == ("uf.parquet, row 2", field)


def test_ultrafeedback_missing_score_is_an_error_when_named():
    row = uf_row(8, 3)
    del row["score_rejected"]
    assert detect_format(row, kind="preference") == "prompt_chosen_rejected"  # without scores: a plain pair
    with pytest.raises(DataError) as err:
        to_preference(row, format="ultrafeedback")
    assert err.value.field_name == "score_rejected"


# ---------------------------------------------------------------- HH harmless and format names

def test_hh_harmless_pairs_have_no_safety_labels(tmp_path):
    row = {"chosen": "\n\nHuman: How do I hurt someone?\n\nAssistant: I won't help with that.",
           "rejected": "\n\nHuman: How do I hurt someone?\n\nAssistant: Here's how."}
    (tmp_path / "harmless.jsonl").write_text(json.dumps(row) + "\n")
    pref = load_preferences(tmp_path / "harmless.jsonl", format="hh")[0]
    assert (pref.chosen, pref.rating, pref.chosen_safe, pref.rejected_safe) == (
        "I won't help with that.", None, None, None)


def test_hh_dialogues_forking_before_the_last_turn_are_dropped():
    prefix = "\n\nHuman: Are drag queens men?\n\nAssistant: No.\n\nHuman: Isn't that drag kings?"
    row = {"chosen": prefix + "\n\nAssistant: Yes.  Human: Why?\n\nAssistant: Because.",
           "rejected": prefix + "\n\nAssistant: A drag king is the opposite."}
    assert to_preference(row, format="hh") is None
    with pytest.raises(DataError, match="share every turn"):  # a different user turn is still an error
        to_preference({**row, "rejected": row["rejected"].replace("men?", "women?")}, format="hh")


def test_recipe_format_names_exist():
    for name in ("preference", "hh", "pandalm", "pandalm_keep_ties", "pku_helpful", "pku_safety", "ultrafeedback"):
        assert name in PREFERENCE_FORMATS
    assert to_preference({"prompt": "q", "chosen": "a", "rejected": "b"}, format="preference").chosen == "a"


# ---------------------------------------------------------------- mixtures

def pairs(prefix: str, n: int, **labels) -> list[Preference]:
    return [Preference(prompt=[{"role": "user", "content": f"{prefix} {i}"}], chosen=f"{prefix}-c{i}",
                       rejected=f"{prefix}-r{i}", meta={"id": f"{prefix}{i}"}, **labels) for i in range(n)]


def ids(mix: list[Preference]) -> list[str]:
    return [p.meta["id"] for p in mix]


def test_mixture_proportions_exact():
    helpful, safety, other = pairs("h", 100), pairs("s", 90), pairs("o", 10)
    helpful_mix, safety_mix, stats = build_rm_mixtures(helpful, safety, other, seed=3)
    # helpfulness RM: all 100 helpful + an equal amount: the whole pool of 100 safety + other pairs
    assert Counter(i[0] for i in ids(helpful_mix)) == {"h": 100, "s": 90, "o": 10}
    assert len(set(ids(helpful_mix))) == 200
    assert stats["helpful_rm"] == {"helpful": 100, "safety": 90, "other": 10, "total": 200}
    # safety RM: all 90 safety pairs are 90% of the mix, so 10 helpfulness pairs
    assert Counter(i[0] for i in ids(safety_mix)) == {"s": 90, "h": 10}
    assert stats["safety_rm"] == {"safety": 90, "helpful": 10, "total": 100}
    assert stats["resampled"] == {"helpful_rm": False, "safety_rm": False}


def test_mixture_partial_sampling_is_without_replacement_and_uniform_over_the_pool():
    helpful, safety, other = pairs("h", 40), pairs("s", 300), pairs("o", 100)
    helpful_mix, safety_mix, stats = build_rm_mixtures(helpful, safety, other, helpful_mix_ratio=0.5,
                                                       safety_mix_helpful_share=0.2, seed=0)
    assert len(helpful_mix) == 60 and len(set(ids(helpful_mix))) == 60
    assert stats["helpful_rm"]["safety"] + stats["helpful_rm"]["other"] == 20
    assert len(safety_mix) == 375 and stats["safety_rm"]["helpful"] == 75  # 75 / 375 = 20%
    assert stats["resampled"]["safety_rm"] and Counter(ids(safety_mix))["h0"] in (1, 2)  # 75 = 40 + 35
    # over many seeds, the pool is sampled in proportion to its parts (300:100)
    from_safety = sum(build_rm_mixtures(helpful, safety, other, helpful_mix_ratio=0.5, seed=s)[2]
                      ["helpful_rm"]["safety"] for s in range(200))
    assert 0.70 < from_safety / (200 * 20) < 0.80


def test_mixture_resamples_when_sources_are_short():
    helpful_mix, safety_mix, stats = build_rm_mixtures(pairs("h", 10), pairs("s", 3), [], helpful_mix_ratio=1.0,
                                                       safety_mix_helpful_share=0.5)
    counts = Counter(ids(helpful_mix))  # 10 extra from 3 safety pairs: 3 whole copies + 1 sampled
    assert all(counts[f"h{i}"] == 1 for i in range(10))
    assert sorted(counts[f"s{i}"] for i in range(3)) == [3, 3, 4]
    assert stats["resampled"] == {"helpful_rm": True, "safety_rm": False}
    assert stats["safety_rm"] == {"safety": 3, "helpful": 3, "total": 6}
    empty = build_rm_mixtures(pairs("h", 5), [], [])
    assert len(empty[0]) == 5 and empty[1] == [] and empty[2]["helpful_rm"]["total"] == 5


def test_drop_rule_removes_exactly_unsafe_chosen_safe_rejected():
    labels = [(False, True), (False, False), (True, False), (True, True), (None, True), (False, None), (None, None)]
    sources = {name: [p for chosen_safe, rejected_safe in labels
                      for p in pairs(f"{name}{chosen_safe}{rejected_safe}", 2, chosen_safe=chosen_safe,
                                     rejected_safe=rejected_safe)] for name in ("h", "s", "o")}
    helpful_mix, safety_mix, stats = build_rm_mixtures(sources["h"], sources["s"], sources["o"],
                                                       safety_mix_helpful_share=0.5)
    assert stats["dropped_unsafe_chosen"] == {"helpful": 2, "safety": 2, "other": 2}
    assert stats["kept"] == {"helpful": 12, "safety": 12, "other": 12}
    for mix in (helpful_mix, safety_mix):
        assert not any(p.chosen_safe is False and p.rejected_safe is True for p in mix)
    kept_helpful = {p.meta["id"] for p in sources["h"] if not is_unsafe_chosen(p)}
    assert kept_helpful <= set(ids(helpful_mix))
    assert {p.meta["id"] for p in sources["s"] if not is_unsafe_chosen(p)} <= set(ids(safety_mix))
    assert len(helpful_mix) == 24 and len(safety_mix) == 24
    _, _, kept_all = build_rm_mixtures(sources["h"], sources["s"], sources["o"], drop_unsafe_chosen=False)
    assert kept_all["dropped_unsafe_chosen"] == {"helpful": 0, "safety": 0, "other": 0}
    assert kept_all["helpful_rm"]["total"] == 28


def test_mixtures_are_deterministic_and_shuffled():
    helpful, safety, other = pairs("h", 50), pairs("s", 45), pairs("o", 20)
    first = build_rm_mixtures(helpful, safety, other, helpful_mix_ratio=0.6, seed=7)
    again = build_rm_mixtures(helpful, safety, other, helpful_mix_ratio=0.6, seed=7)
    other_seed = build_rm_mixtures(helpful, safety, other, helpful_mix_ratio=0.6, seed=8)
    assert ids(first[0]) == ids(again[0]) and ids(first[1]) == ids(again[1]) and first[2] == again[2]
    assert ids(first[0]) != ids(other_seed[0]) and ids(first[1]) != ids(other_seed[1])
    assert ids(first[0])[:50] != ids(helpful)  # shuffled, not helpful-then-extra
    # the safety mix does not move when only the helpfulness RM's knob changes
    assert ids(build_rm_mixtures(helpful, safety, other, helpful_mix_ratio=1.0, seed=7)[1]) == ids(first[1])


def test_mixture_arguments_are_checked():
    with pytest.raises(ValueError, match="helpful_mix_ratio"):
        build_rm_mixtures([], [], [], helpful_mix_ratio=-1)
    with pytest.raises(ValueError, match="safety_mix_helpful_share"):
        build_rm_mixtures([], [], [], safety_mix_helpful_share=1.0)


# ---------------------------------------------------------------- the real files, where this checkout has them

@pytest.mark.skipif(not (PANDALM_FILE.exists() and HH_HARMLESS_FILE.exists()),
                    reason="needs the shared PandaLM test set and HH-RLHF harmless rows beside the repository")
def test_real_pandalm_and_hh_harmless_load_fully():
    pandalm = load_preferences(PANDALM_FILE, format="pandalm")
    with_ties = load_preferences(PANDALM_FILE, format="pandalm_keep_ties")
    hh = load_preferences(HH_HARMLESS_FILE, format="hh")
    pandalm_counts = Counter(p.rating for p in pandalm)
    hh_counts = Counter(p.rating for p in hh)
    print(f"\nPandaLM {len(pandalm)} pairs, {len(with_ties) - len(pandalm)} ties dropped: "
          f"{ {r: pandalm_counts[r] for r in RATINGS} }")
    print(f"HH harmless {len(hh)} pairs of 1600 rows: {dict(hh_counts)}")
    assert len(with_ties) == 999  # SOURCE.txt: 999 rows
    assert {r: pandalm_counts[r] for r in RATINGS} == {"significantly_better": 794, "better": 31,
                                                        "slightly_better": 69, "negligibly_better": 20}
    assert sum(p.meta.get("tie", False) for p in with_ties) == 85
    assert len(hh) == 1599 and hh_counts == {None: 1599}  # line 1255 forks early (see hh_to_preference)
    assert all(p.chosen_safe is None and p.rejected_safe is None for p in hh)
