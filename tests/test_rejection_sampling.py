"""Stage 3: the safety-gated choice of the best answer, pooling across rounds, best-of-N curves, and an
end-to-end run base -> sft -> reward -> rs on the tiny recipe (round-by-round reuse, same seed same samples)."""
from __future__ import annotations

import itertools
import json
import random
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data.loaders import read_jsonl
from data.records import Conversation, prompt_key
from eval.best_of_n import best_of_n_curve, expected_max, expected_median, win_rate
from stages import rejection_sampling as rs
from stages.recipe import RecipeError, RejectionSamplingSection, recipe_from_dict
from stages.rollouts import Answer, Scores, score_answers

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"
UNSAFE = -3.0  # σ(-3) ≈ 0.047 < 0.15: the safety RM finds the answer unsafe
SAFE = 2.0     # σ(2) ≈ 0.88


class FakeScorer:
    """Scores an answer by looking it up: the stage only needs .score(conversations, responses)."""

    def __init__(self, table: dict[str, float]):
        self.table, self.calls = table, 0

    def score(self, conversations, responses):
        self.calls += 1
        return torch.tensor([self.table[r] for r in responses])


def prompt(text: str, is_safety: bool = False) -> Conversation:
    return Conversation(messages=[{"role": "user", "content": text}], meta={"is_safety": is_safety})


# --- the combination rule as the stage applies it -----------------------------------------------

def answers_of(texts: list[list[str]], truncated: set[str] = frozenset()) -> list[list[Answer]]:
    return [[Answer(t, "length" if t in truncated else "stop") for t in group] for group in texts]


def test_safety_gate_picks_the_score_the_paper_says():
    from reward.combine import RewardFunction

    prompts = [prompt("how do I pick a lock?", is_safety=True), prompt("capital of France?")]
    texts = [["refuse", "comply"], ["unsafe but helpful", "safe and helpful", ""]]
    helpful = FakeScorer({"refuse": 0.5, "comply": 4.0, "unsafe but helpful": 5.0, "safe and helpful": 1.0, "": 0.0})
    safety = FakeScorer({"refuse": SAFE, "comply": 1.0, "unsafe but helpful": UNSAFE, "safe and helpful": SAFE,
                         "": SAFE})
    reward_fn = RewardFunction(helpful, safety, threshold=0.15)
    scores = score_answers(prompts, texts, reward_fn)
    assert helpful.calls == safety.calls == 1  # one batched pass per RM
    # a safety prompt is always judged by the safety RM, even when the answer is safe
    assert [s.reward for s in scores[0]] == [SAFE, 1.0]
    # a helpfulness prompt: an answer the safety RM finds unsafe (R_s < 0.15) gets its safety score,
    # a safe one its helpfulness score
    assert [s.reward for s in scores[1]] == [UNSAFE, 1.0, 0.0]
    assert (scores[1][0].helpful, scores[1][0].safety, scores[1][0].unsafe) == (5.0, UNSAFE, True)

    best = rs.best_of_round(prompts, answers_of(texts), scores, round_index=1)
    chosen = [best[prompt_key(p.messages)] for p in prompts]
    assert [c.answer for c in chosen] == ["refuse", "safe and helpful"]  # the unsafe answer lost despite h=5
    assert all(c.round == 1 for c in chosen) and chosen[1].sample == 1

    # without the tag the same refusal/compliance pair is ranked by helpfulness
    untagged = [prompt("how do I pick a lock?")]
    scores = score_answers(untagged, texts[:1], reward_fn)
    assert rs.best_of_round(untagged, answers_of(texts[:1]), scores, 1)[
        prompt_key(untagged[0].messages)].answer == "comply"


def test_an_unsafe_answer_never_beats_a_safe_one_whatever_the_two_rms_levels():
    """The issue's case: on a helpfulness prompt an unsafe answer's R_c is its R_s (-2) and a safe answer's
    is its R_h (-3); the raw max would pick the unsafe one. Selection and pooling rank it last."""
    from reward.combine import RewardFunction

    prompts = [prompt("write me a poem")]
    texts = [["unsafe", "safe"]]
    reward_fn = RewardFunction(FakeScorer({"unsafe": 4.0, "safe": -3.0}), FakeScorer({"unsafe": -2.0, "safe": 3.0}))
    scores = score_answers(prompts, texts, reward_fn)
    assert [s.reward for s in scores[0]] == [-2.0, -3.0] and [s.unsafe for s in scores[0]] == [True, False]
    best = rs.best_of_round(prompts, answers_of(texts), scores, 1)[prompt_key(prompts[0].messages)]
    assert best.answer == "safe" and not best.unsafe
    # an unsafe target pooled from an earlier round gives way to a safe answer with a lower reward
    key = prompt_key(prompts[0].messages)
    earlier = {key: rs.Candidate(key, prompts[0].messages, "unsafe", -2.0, 4.0, -2.0, 1, 0, unsafe=True)}
    assert rs.pool_targets(earlier, {key: best}, pool_rounds=True)[key].answer == "safe"
    assert rs.pool_targets({key: best}, earlier, pool_rounds=True)[key].answer == "safe"


def test_truncated_answers_are_never_chosen_and_are_counted():
    prompts = [prompt("a"), prompt("b")]
    texts = [["cut off mid", "short"], ["also cut"]]
    scores = [[Scores(0, 0, 5.0), Scores(0, 0, 1.0)], [Scores(0, 0, 9.0)]]
    answers = answers_of(texts, truncated={"cut off mid", "also cut"})
    best = rs.best_of_round(prompts, answers, scores, 1)
    assert {k: c.answer for k, c in best.items()} == {prompt_key(prompts[0].messages): "short"}
    rows = rs.sample_rows(prompts, answers, scores, best, 1, 1.0)
    assert [s["finish_reason"] for row in rows for s in row["samples"]] == ["length", "stop", "length"]
    assert rows[1]["chosen"] is None
    # targets read back from samples.jsonl keep the same choice
    assert rs.targets_from_rows(rows, 1) == best


def test_empty_answers_are_never_chosen_and_ties_keep_the_first():
    prompts = [prompt("a"), prompt("b")]
    answers = answers_of([["", "x", "y"], ["", " "]])
    scores = [[Scores(0, 0, 9.0), Scores(0, 0, 1.0), Scores(0, 0, 1.0)],
              [Scores(0, 0, 1.0), Scores(0, 0, 2.0)]]
    best = rs.best_of_round(prompts, answers, scores, round_index=2)
    assert list(best) == [prompt_key(prompts[0].messages)]
    assert best[prompt_key(prompts[0].messages)].answer == "x"


# --- pooling --------------------------------------------------------------------------------------

def candidate(key: int, answer: str, reward: float, round_index: int) -> rs.Candidate:
    return rs.Candidate(key, [{"role": "user", "content": str(key)}], answer, reward, reward, 1.0, round_index, 0)


def test_pooling_keeps_the_best_answer_of_any_round():
    round1 = {1: candidate(1, "r1 good", 3.0, 1), 2: candidate(2, "r1 poor", -1.0, 1),
              3: candidate(3, "r1 only", 0.5, 1)}
    round2 = {1: candidate(1, "r2 worse", 2.0, 2), 2: candidate(2, "r2 better", 1.0, 2), 4: candidate(4, "new", 0.0, 2)}
    pooled = rs.pool_targets(rs.pool_targets({}, round1, True), round2, pool_rounds=True)
    assert {k: c.answer for k, c in pooled.items()} == {1: "r1 good", 2: "r2 better", 3: "r1 only", 4: "new"}
    # a tie keeps the earlier round's answer
    assert rs.pool_targets(round1, {1: candidate(1, "tie", 3.0, 2)}, True)[1].answer == "r1 good"
    # pool_rounds false (Llama 2 up to RLHF-V3): only the latest round's best answers, even worse ones
    latest = rs.pool_targets(round1, round2, pool_rounds=False)
    assert {k: c.answer for k, c in latest.items()} == {1: "r2 worse", 2: "r2 better", 4: "new"}
    stats = rs.pool_stats(pooled, 2, prompts=4)
    assert stats["from_round"] == {"1": 2, "2": 2} and stats["from_this_round"] == 2 and stats["targets"] == 4


# --- rounds and their recorded sections -------------------------------------------------------------

def test_a_round_records_its_own_index_and_temperature_not_the_round_count():
    one, three = RejectionSamplingSection(rounds=1), RejectionSamplingSection(rounds=3, temperatures=[1.0, 1.2])
    assert rs.round_section(one, 1) == rs.round_section(three, 1)  # asking for more rounds keeps round 1 reusable
    assert rs.round_section(three, 1) != rs.round_section(three, 2)
    assert [rs.round_temperature(three, r) for r in (1, 2, 3)] == [1.0, 1.2, 1.2]
    assert "rounds" not in rs.round_section(three, 2) and rs.round_section(three, 2)["temperature"] == 1.2


@pytest.mark.parametrize("bad, key", [({"temperatures": []}, "temperatures"),
                                      ({"temperatures": [1.0, 0.0]}, "temperatures"),
                                      ({"sweep_temperatures": [-1.0]}, "sweep_temperatures"),
                                      ({"top_p": 0.0}, "top_p")])
def test_sampling_settings_are_refused_when_the_recipe_loads(bad, key):
    with pytest.raises(RecipeError, match=f"key 'rejection_sampling.{key}'"):
        recipe_from_dict({"rejection_sampling": bad})


def test_cli_knows_stage_3_by_every_name():
    from stages import catalogue

    assert {catalogue.stage(n).load() for n in ("rejection_sampling", "3", "rs", "stage-3")} == {rs}


def test_a_resumed_round_reuses_its_scored_samples(tmp_path, monkeypatch):
    rows = [{"round": 1, "prompt_key": 7, "samples": []}]
    (tmp_path / rs.SAMPLES_FILE).write_text(json.dumps(rows[0]) + "\n")
    monkeypatch.setattr(rs, "sample_answers", lambda *a, **k: pytest.fail("a resumed round sampled again"))
    run = SimpleNamespace(workdir=tmp_path, resume=True)
    assert rs.sample_and_score(run, SimpleNamespace(index=1), reward_fn=None) == rows


# --- best-of-N and win rate -----------------------------------------------------------------------

def test_best_of_n_is_the_expectation_over_every_subset():
    values = [0.3, -1.0, 2.5, 0.7, 1.1]
    for n in range(1, len(values) + 1):
        subsets = list(itertools.combinations(values, n))
        assert expected_max(values, n) == pytest.approx(statistics.fmean(max(s) for s in subsets))
        assert expected_median(values, n) == pytest.approx(statistics.fmean(statistics.median(s) for s in subsets))


def test_best_of_n_max_rises_with_n_and_stays_above_the_median():
    rng = random.Random(0)
    for _ in range(20):
        k = rng.randint(1, 12)
        rewards = [[rng.gauss(0, 1) for _ in range(k)] for _ in range(rng.randint(1, 6))]
        curve = best_of_n_curve(rewards)
        assert curve["n"] == list(range(1, k + 1))
        assert all(a <= b + 1e-12 for a, b in zip(curve["max"], curve["max"][1:]))
        assert all(m >= med - 1e-12 for m, med in zip(curve["max"], curve["median"]))
        assert curve["max"][0] == pytest.approx(curve["median"][0])  # one sample: best = typical
        assert curve["max"][-1] == pytest.approx(statistics.fmean(max(r) for r in rewards))
    with pytest.raises(ValueError, match="same number of samples"):
        best_of_n_curve([[1.0, 2.0], [1.0]])


def test_win_rate_removes_ties():
    assert win_rate([1, 2, 3, 0], [0, 2, 4, -1]) == {"wins": 2, "losses": 1, "ties": 1, "win_rate": 2 / 3}
    assert win_rate([1.0], [1.0])["win_rate"] is None


def test_best_of_n_plot(tmp_path):
    from eval.best_of_n import plot_best_of_n

    curves = {"T=1": best_of_n_curve([[0.0, 1.0, 2.0]]), "T=1.2": best_of_n_curve([[1.0, -1.0, 3.0]])}
    plot_best_of_n(curves, tmp_path / "b.png", title="t")
    assert (tmp_path / "b.png").stat().st_size > 1000


# --- end to end -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stage_3_end_to_end_round_by_round(tmp_path, monkeypatch):
    from stages import base, reward_models, sft
    from stages.common import open_registry
    from stages.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    common = [f"runs_dir={tmp_path / 'runs'}", "sft.train.max_steps=2", "reward.train.max_steps=2",
              "sft.heldout=[{source: builtin, n: 8, split: heldout}]"]
    recipe = load_recipe(RECIPE, overrides=common + ["rejection_sampling.rounds=1"])
    registry = open_registry(recipe)
    base.run(recipe, registry)
    (sft_version,) = sft.run(recipe, registry)
    helpful_rm, safety_rm = reward_models.run(recipe, registry)

    sampled = []
    sample_answers = rs.sample_answers

    def counting(model_path, *args, **kwargs):
        sampled.append((Path(model_path).name, kwargs["stream"]))
        return sample_answers(model_path, *args, **kwargs)

    monkeypatch.setattr(rs, "sample_answers", counting)
    (round1,) = rs.run(recipe, registry)
    assert round1.id == "rs/v1" and sampled == [(sft_version.path.name, "round-1")]

    # asking for two rounds reuses round 1 and samples only for round 2, from round 1's model
    two = load_recipe(RECIPE, overrides=common + ["rejection_sampling.rounds=2"])
    versions = rs.run(two, registry)
    assert [v.id for v in versions] == ["rs/v1", "rs/v2"] and versions[0].path == round1.path
    assert sampled[1:] == [("v1", "round-2")]

    round2 = versions[1]
    assert [p["id"] for p in round1.manifest["parents"]] == ["sft/v1", "rm-helpful/v1", "rm-safety/v1"]
    assert [p["id"] for p in round2.manifest["parents"]] == ["rs/v1", "rm-helpful/v1", "rm-safety/v1"]
    lineage = [v.id for v in registry.lineage("rs@latest")]
    assert lineage[:4] == ["rs/v2", "rs/v1", "sft/v1", "base/v1"] and {"rm-helpful/v1", "rm-safety/v1"} <= set(lineage)
    assert round2.manifest["recipe_section"]["round"] == 2 and round2.manifest["recipe_section"]["temperature"] == 1.2

    K = two.rejection_sampling.samples_per_prompt
    for index, version in enumerate(versions, start=1):
        summary = version.manifest["rejection_sampling"]
        assert summary["round"] == index and summary["pool"]["targets"] > 0
        rows = read_jsonl(version.path / rs.SAMPLES_FILE)
        assert len(rows) == 8 and all(len(r["samples"]) == K and r["round"] == index for r in rows)
        samples = [s for row in rows for s in row["samples"]]
        assert summary["truncated"] == sum(s["finish_reason"] == "length" for s in samples)
        for row in rows:
            eligible = [s for s in row["samples"] if s["text"].strip() and s["finish_reason"] == "stop"]
            if row["chosen"] is None:
                assert not eligible
                continue
            keys = [(not s["unsafe"], s["reward"]) for s in eligible]
            chosen = row["samples"][row["chosen"]]
            assert chosen["finish_reason"] == "stop" and (not chosen["unsafe"], chosen["reward"]) == max(keys)
            assert sum(s["chosen"] for s in row["samples"]) == 1
        assert (version.path / rs.BEST_OF_N_PNG).stat().st_size > 1000
        metrics = version.manifest["metrics"]
        curve = metrics["best_of_n"][f"round {index}, T={rs.round_temperature(two.rejection_sampling, index):g}"]
        assert curve["n"] == list(range(1, K + 1)) and curve["max"][-1] >= curve["median"][-1]
        assert metrics["heldout"]["prompts"] == 8 and "oracle_helpful_accuracy" in metrics
        assert json.loads((version.path / rs.EVAL_FILE).read_text())["heldout"] == metrics["heldout"]
        assert not (version.path / "checkpoints").exists()
    # round 2's plot carries round 1's curve too; its pool holds the best of both rounds per prompt
    assert len(round2.manifest["metrics"]["best_of_n"]) == 2
    pool1 = rs.read_pool(round1)
    pool2 = rs.read_pool(round2)
    assert set(pool1) <= set(pool2) and all(pool2[k].selection_key() >= pool1[k].selection_key() for k in pool1)

    # same seed, same samples: a forced fresh run of round 1 writes identical samples and targets
    (again,) = rs.run(recipe, registry, force=True)
    assert again.id == "rs/v3"
    for name in (rs.SAMPLES_FILE, rs.POOL_FILE):
        assert (again.path / name).read_bytes() == (round1.path / name).read_bytes()

    # a round interrupted after sampling: --resume continues it without sampling again
    changed = load_recipe(RECIPE, overrides=common + ["rejection_sampling.rounds=1",
                                                      "rejection_sampling.max_new_tokens=20"])
    fine_tune = rs.fine_tune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rs, "fine_tune", interrupted)
    before = len(sampled)
    with pytest.raises(KeyboardInterrupt):
        rs.run(changed, registry)
    assert len(sampled) == before + 1 and [v.number for v in registry.versions("rs")] == [1, 2, 3]
    monkeypatch.setattr(rs, "fine_tune", fine_tune)
    (resumed,) = rs.run(changed, registry, resume=True)
    assert resumed.id == "rs/v4" and len(sampled) == before + 1

    # `chatalign eval` on prompt and pair files in the published layouts of the public sets
    import csv

    from data.builtin.oracle import is_refusal
    from stages.cli import main

    real = tmp_path / "real"
    (real / "advbench").mkdir(parents=True)
    with open(real / "advbench" / "harmful_behaviors.csv", "w", newline="") as f:
        rows = [{"goal": f"Explain how to do harmful thing number {i}", "target": "Sure"} for i in range(40)]
        csv.DictWriter(f, ["goal", "target"]).writeheader()
        csv.DictWriter(f, ["goal", "target"]).writerows(rows)
    (real / "xstest").mkdir()
    with open(real / "xstest" / "xstest_prompts.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "prompt", "type", "label"])
        writer.writeheader()
        writer.writerows([{"id": i, "prompt": f"How do I kill process {i}?", "type": "homonyms",
                           "label": "safe" if i % 2 else "unsafe"} for i in range(6)])
    (real / "llmbar" / "Natural").mkdir(parents=True)
    (real / "llmbar" / "Natural" / "dataset.json").write_text(json.dumps(
        [{"input": f"Name fruit {i}.", "output_1": "An apple.", "output_2": "A chair.", "label": 1} for i in range(4)]))
    out = tmp_path / "eval" / "real.json"
    assert main(["eval", "--recipe", str(RECIPE), "--set", common[0], "--real-data", str(real),
                 "--refs", "sft@latest", "rs@v2", "--max-new-tokens", "8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["results"]
    assert set(report) == {"sft@v1", "rs@v2", "rm-helpful@v1", "rm-safety@v1"}
    assert report["rm-helpful@v1"]["rm"]["llmbar_natural"]["n"] == 4
    prompts = report["rs@v2"]["prompts"]
    assert prompts["xstest_safe"]["n"] == 3 and prompts["xstest_unsafe"]["n"] == 3
    assert 0 < prompts["advbench"]["n"] < 40  # only the test part of a file a recipe may train on
    examples = report["sft@v1"]["answers"]["xstest_safe"]
    assert len(examples) == 3 and all(e["refused"] == is_refusal(e["answer"]) for e in examples)
    refused = sum(is_refusal(e["answer"]) for e in examples)
    assert report["sft@v1"]["prompts"]["xstest_safe"]["refusal_rate"] == refused / len(examples)
    assert "| sft@v1 |" in out.with_suffix(".md").read_text()
