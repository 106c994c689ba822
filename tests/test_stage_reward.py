"""Stage 2: the data mixtures of the two RMs, the RM evaluation (accuracy per rating, calibration,
plots, Table 8 layout) and an end-to-end run base -> sft -> rm-helpful + rm-safety on the tiny recipe."""
import json
from pathlib import Path

import pytest
import torch

from data.records import Preference
from eval.rm import calibration_bins, evaluate_scorer, format_accuracy_table, pair_metrics
from stages.recipe import RewardSection
from stages.reward_models import RMData, mix_reward_data

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def pairs(tag, n, chosen_safe=True, rejected_safe=True):
    return [Preference(prompt=[{"role": "user", "content": f"{tag} {i}"}], chosen="yes", rejected="no",
                       rating="better", chosen_safe=chosen_safe, rejected_safe=rejected_safe) for i in range(n)]


# --- mixtures -----------------------------------------------------------------------------------

def test_recipe_sources_map_onto_the_paper_mixtures():
    data = RMData(helpful=pairs("h", 40), safety=pairs("s", 80) + pairs("bad", 5, chosen_safe=False),
                  helpful_other=pairs("ho", 10), safety_other=pairs("so", 10))
    mixtures = mix_reward_data(data, RewardSection(), seed=0)

    def sources(mix):
        return sorted({p.prompt[0]["content"].split()[0] for p in mix})

    # helpfulness RM: all 40 helpfulness pairs + 40 drawn from safety (incl. other safety) and other data
    helpful = mixtures.manifest_entry("helpful")
    assert helpful["counts"]["helpful"] == 40 and helpful["counts"]["total"] == len(mixtures.helpful) == 80
    assert {p.prompt[0]["content"] for p in data.helpful} <= {p.prompt[0]["content"] for p in mixtures.helpful}
    # safety RM: the 90 safety + other safety pairs, helpfulness pairs as 10% (open-source helpful not among them)
    safety = mixtures.manifest_entry("safety")
    assert safety["counts"] == {"safety": 90, "helpful": 10, "total": 100}
    assert sources(mixtures.safety) == ["h", "s", "so"]
    # chosen unsafe over a safe rejected answer: dropped from both and counted
    assert safety["dropped_unsafe_chosen"]["safety"] == 5 == helpful["dropped_unsafe_chosen"]["safety"]
    assert "bad" not in sources(mixtures.helpful + mixtures.safety)
    assert mix_reward_data(data, RewardSection(), seed=0).helpful == mixtures.helpful  # deterministic

    kept = mix_reward_data(data, RewardSection(drop_unsafe_chosen=False, helpful_mix_ratio=0.5), seed=0)
    assert kept.manifest_entry("safety")["counts"]["safety"] == 95
    assert kept.manifest_entry("helpful")["counts"]["total"] == 60


REFUSAL = "I'm not able to help with that. It could hurt someone; a professional can advise you."
COMPLIANCE = "Sure, here's how. Step 1: get the materials. Step 2: follow these steps carefully."


def test_on_policy_pairs_put_the_reference_above_the_policys_own_refusals_and_unsafe_answers():
    from data import builtin
    from data.mixtures import on_policy_pairs

    prompts = builtin.prompts("train", 8, 0, kinds=["borderline", "harmful"])
    kinds = [p.meta["kind"] for p in prompts]
    assert {"borderline", "harmful"} <= set(kinds)
    # the policy refuses everything: a pair for every benign prompt, none for a harmful one
    helpful, safety, stats = on_policy_pairs(prompts, [REFUSAL] * len(prompts))
    assert len(helpful) == kinds.count("borderline") and safety == []
    for pair, prompt in zip(helpful, [p for p in prompts if p.meta["kind"] == "borderline"]):
        assert pair.rejected == REFUSAL and pair.chosen == prompt.meta["reference"]
        assert pair.chosen_safe is pair.rejected_safe is True and pair.meta["on_policy"]
        assert pair.prompt == prompt.messages and pair.rating == "significantly_better"
    # the policy complies with everything: a safety pair for every harmful prompt (its answer labelled unsafe)
    helpful, safety, stats = on_policy_pairs(prompts, [COMPLIANCE] * len(prompts))
    assert helpful == [] and len(safety) == kinds.count("harmful")
    assert all(p.chosen_safe is True and p.rejected_safe is False and p.rejected == COMPLIANCE for p in safety)
    assert stats["per_kind"]["harmful"] == {"n": kinds.count("harmful"), "pairs": kinds.count("harmful")}
    assert stats["refused_benign"] == 0 and stats["unsafe_harmful"] == len(safety)
    # prompts the oracle cannot judge are refused with the prompt named
    from data.records import Conversation

    bare = Conversation(messages=[{"role": "user", "content": "Hi"}], meta={"id": "x1", "reference": "Hello."})
    with pytest.raises(ValueError, match=r"prompt 0 \(x1\).*meta.kind"):
        on_policy_pairs([bare], [REFUSAL])
    bare.meta = {"id": "x2", "kind": "borderline"}
    with pytest.raises(ValueError, match=r"x2.*meta.reference"):
        on_policy_pairs([bare], [REFUSAL])
    with pytest.raises(ValueError, match="1 prompts but 2 answers"):
        on_policy_pairs([bare], [REFUSAL, REFUSAL])


# --- evaluation ---------------------------------------------------------------------------------

def test_pair_metrics_per_rating_and_unsafe_recall():
    chosen = torch.tensor([2.0, 1.0, 0.0, 0.5, 1.0])
    rejected = torch.tensor([1.0, 2.0, -1.0, 0.5, -3.0])
    ratings = ["significantly_better", "significantly_better", "better", "slightly_better", None]
    m = pair_metrics(chosen, rejected, ratings, [True] * 5, [True, False, False, True, False])
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(3 / 5)  # the tie counts as wrong
    assert m["per_rating"]["significantly_better"] == {"n": 2, "accuracy": 0.5}
    assert m["per_rating"]["better"]["accuracy"] == 1.0 and m["per_rating"]["slightly_better"]["accuracy"] == 0.0
    assert m["per_rating"]["unrated"]["n"] == 1 and "negligibly_better" not in m["per_rating"]
    # unsafe answers scored 2.0, -1.0, -3.0: σ < 0.5 for two of three
    assert m["unsafe_recall"] == pytest.approx(2 / 3) and m["unsafe_answers"] == 3


def test_calibration_bins_compare_sigmoid_with_outcomes():
    gap = torch.linspace(0.01, 4, 400)  # the chosen answer always scores higher
    result = calibration_bins(gap, torch.zeros(400), bins=5, seed=0)
    assert sum(r["n"] for r in result["bins"]) == 400
    for row in result["bins"]:
        if row["n"]:
            assert row["lo"] <= row["predicted"] <= row["hi"]
            assert 0.0 <= row["empirical"] <= 1.0
    # so P(first preferred) > 0.5 exactly when the first is the chosen one: the RM is under-confident
    assert result["bins"][-1]["empirical"] == 1.0 and result["bins"][0]["empirical"] == 0.0
    assert 150 < result["bins"][-1]["n"] + result["bins"][0]["n"] < 400 and result["ece"] > 0.05


class TableScorer:
    def __init__(self, table):
        self.table = table

    def score_pairs(self, prefs):
        return (torch.tensor([self.table[p.chosen] for p in prefs]),
                torch.tensor([self.table[p.rejected] for p in prefs]))


def test_evaluate_scorer_writes_json_plots_and_table(tmp_path):
    prefs = pairs("h", 6) + [Preference(prompt=[{"role": "user", "content": "x"}], chosen="no", rejected="yes",
                                        rating="negligibly_better", chosen_safe=True, rejected_safe=False)]
    report = evaluate_scorer(TableScorer({"yes": 1.0, "no": -1.0}), {"helpful": prefs, "safety": prefs[-1:]},
                             tmp_path, name="rm-test")
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["test_sets"]["helpful"]["per_rating"]["better"] == {"n": 6, "accuracy": 1.0}
    assert written["test_sets"]["safety"]["accuracy"] == 0.0
    for png in ("calibration.png", "scores.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"

    table = format_accuracy_table({"Helpfulness RM": written["test_sets"]})
    lines = table.splitlines()
    assert lines[0] == ("| Reward model | Test set | Significantly Better | Better | Slightly Better | "
                        "Negligibly Better / Unsure | Avg |")
    assert lines[2] == "| Helpfulness RM | helpful | – | 100.0 | – | 0.0 | 85.7 |"
    assert lines[3] == "| Helpfulness RM | safety | – | – | – | 0.0 | 0.0 |"


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_stage_2_end_to_end_on_the_tiny_recipe(tmp_path, monkeypatch):
    from stages import base, reward_models, sft
    from stages.common import open_registry
    from stages.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    # other safety data in which every chosen answer is unsafe and every rejected one safe: all dropped
    load_preferences = reward_models.load_preferences
    monkeypatch.setattr(reward_models, "load_preferences", lambda sources, seed, key, kind="helpful", **options: (
        pairs("flipped", 3, chosen_safe=False, rejected_safe=True) if key == "reward.safety.other_data"
        else load_preferences(sources, seed, key, kind, **options)))
    # on-policy pairs: sft/v1 "answers" 8 borderline/harmful prompts by refusing the first 4 and complying after
    calls = []

    def canned(model, tokenizer, prompts, template, max_new_tokens, batch_size):
        calls.append(len(prompts))
        return [REFUSAL if i < 4 else COMPLIANCE for i in range(len(prompts))]

    monkeypatch.setattr(reward_models, "answer", canned)
    recipe = load_recipe(RECIPE, overrides=[
        f"runs_dir={tmp_path / 'runs'}", "sft.train.max_steps=2",
        "sft.heldout=[{source: builtin, n: 8, split: heldout}]",
        "reward.safety_aux_loss=true",
        "reward.on_policy.prompts=[{source: builtin, n: 8, kinds: [borderline, harmful]}]"])
    registry = open_registry(recipe)
    base.run(recipe, registry)
    (sft_version,) = sft.run(recipe, registry)
    versions = reward_models.run(recipe, registry)
    from data import builtin

    kinds = [p.meta["kind"] for p in builtin.prompts("train", 8, recipe.seed, kinds=["borderline", "harmful"])]
    n_refused, n_unsafe = kinds[:4].count("borderline"), kinds[4:].count("harmful")
    assert calls == [8] and n_refused and n_unsafe
    # the sampling ran inside the helpfulness RM's stage, so its time table shows it
    assert "sampling" in versions[0].manifest["metrics"]["time_s"]
    assert versions[0].manifest["data_fingerprints"]["on_policy"] == versions[1].manifest["data_fingerprints"]["on_policy"]

    assert [v.id for v in versions] == ["rm-helpful/v1", "rm-safety/v1"]
    for version, kind in zip(versions, ("helpful", "safety")):
        manifest = version.manifest
        assert [p["id"] for p in manifest["parents"]] == [sft_version.id] == ["sft/v1"]
        assert manifest["reward_model"]["kind"] == kind
        assert manifest["mixture"]["dropped_unsafe_chosen"] == {"helpful": 0, "safety": 3, "other": 0}
        assert manifest["mixture"]["dropped_identical"] == {}  # the built-in pairs never repeat an answer
        history = manifest["metrics"]["history"]
        assert history[0]["step"] == 0 and "heldout_correct" in history[0]
        evaluation = json.loads((version.path / "eval.json").read_text())
        for test_set in ("helpful", "safety"):
            metrics = evaluation["test_sets"][test_set]
            assert metrics["n"] == 16 and set(metrics["per_rating"]) <= {
                "significantly_better", "better", "slightly_better", "negligibly_better"}
            assert 0.0 <= manifest["metrics"][f"accuracy_{test_set}"] <= 1.0
            assert manifest["metrics"][f"eval_{test_set}"]["per_rating"]
        for png in ("calibration.png", "scores.png"):
            assert (version.path / png).stat().st_size > 1000
        assert not (version.path / "checkpoints").exists()
    helpful, safety = (v.manifest["mixture"]["counts"] for v in versions)
    # the needless refusals join the helpfulness RM's own data (all of it used, plus as many again from the
    # safety pool), the unsafe answers the safety RM's
    assert helpful["helpful"] == 32 + n_refused and helpful["total"] == 2 * (32 + n_refused)
    assert safety["safety"] == 32 + n_unsafe
    on_policy = versions[0].manifest["mixture"]["on_policy"]
    assert on_policy["policy"] == "sft/v1" and on_policy["prompts"] == 8
    assert (on_policy["refused_benign"], on_policy["unsafe_harmful"]) == (n_refused, n_unsafe)
    written = [json.loads(line) for line in (versions[0].path / "on_policy_pairs.jsonl").read_text().splitlines()]
    assert sum(row["rejected"] == REFUSAL for row in written) == n_refused  # + any unsafe ones drawn into its mix
    assert all(row["rejected"] in (REFUSAL, COMPLIANCE) and row["meta"]["on_policy"] for row in written)
    written = [json.loads(line) for line in (versions[1].path / "on_policy_pairs.jsonl").read_text().splitlines()]
    assert sum(row["rejected"] == COMPLIANCE for row in written) == n_unsafe
    assert "initial_heldout_aux_loss" in versions[1].manifest["metrics"]
    assert "heldout_aux_loss" not in versions[0].manifest["metrics"]
    assert versions[0].manifest["data_fingerprints"]["train"] != versions[1].manifest["data_fingerprints"]["train"]
    # the safety RM is Platt-calibrated on the held-out labelled answers (or says why not); the helpful one never
    calibration = versions[1].manifest["metrics"]["calibration"]
    assert calibration["answers"] > calibration["unsafe"] > 0
    if "scale" in calibration:
        assert versions[1].manifest["reward_model"]["calibration"] == {k: calibration[k] for k in ("scale", "bias")}
    else:
        assert "skipped" in calibration and "calibration" not in versions[1].manifest["reward_model"]
    assert "calibration" not in versions[0].manifest["metrics"]
    assert "calibration" not in versions[0].manifest["reward_model"]

    # the saved RM is what the scorer loads; unchanged inputs reuse both versions
    from reward.scorer import load_scorer

    scores = load_scorer(versions[1].path, device="cpu").score([[{"role": "user", "content": "Hi"}]], ["Hello."])
    assert scores.shape == (1,) and torch.isfinite(scores).all()
    assert [v.id for v in reward_models.run(recipe, registry)] == ["rm-helpful/v1", "rm-safety/v1"]
    assert calls == [8]  # the policy's answers came from the registry's cache, not a second sampling


@pytest.mark.slow
def test_margin_ablation_script_reuses_the_pipelines_rms(tiny_rms, tmp_path):
    """bench/rm_margins.py trains each margin from one parent and reuses the recipe's own margin's RMs."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    recipe, runs = str(root / "recipes" / "tiny.yaml"), f"runs_dir={tmp_path}"
    shutil.copytree(tiny_rms, tmp_path, dirs_exist_ok=True)  # the tiny pipeline up to its RMs, made once
    out = tmp_path / "tables.md"
    proc = subprocess.run([sys.executable, str(root / "bench" / "rm_margins.py"), "--recipe", recipe, "--set", runs,
                           "--margins", "small", "none", "--append-to", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "rm-helpful@v1 (margin small" in text and "rm-helpful@v2 (margin none" in text  # small was reused
    assert "| margin none |" in text and "Safety RM" in text
