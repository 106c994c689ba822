"""The evaluation suite (eval/suite.py, `chatalign eval`) and the run report (eval/report.py, `chatalign
report`): the arithmetic, every plot from data shaped as a run records it, the absent plots named with
their reason, and the page checked in headless Chromium (tests/chromium.py) offline. The end-to-end test
runs the tiny recipe's whole pipeline, which ends with the suite and the report."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from eval.report import FILES_DIR, REPORT_HTML, REPORT_MD, build_report, per_turn_series, write_report
from eval.suite import compare, headline, prompt_group

from chromium import check, find_chromium  # tests/ is on sys.path (pytest rootdir-relative import)

TINY = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"
CHROMIUM = find_chromium()
NO_BROWSER = ("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it; or set $CHROMIUM)"
              if CHROMIUM is None else None if importlib.util.find_spec("websocket") else
              "websocket-client is not installed (make install-dev installs it)")
needs_chromium = pytest.mark.skipif(NO_BROWSER is not None, reason=str(NO_BROWSER))


def test_prompt_groups_and_win_rates_per_group():
    assert prompt_group({"kind": "harmful"}) == prompt_group({"kind": "borderline"}) == "safety"
    assert prompt_group({"is_safety": True}) == "safety" and prompt_group({"kind": "helpful"}) == "helpful"
    groups = ["helpful", "helpful", "safety", "safety"]
    new = [{"reward": r} for r in (1.0, 0.0, 2.0, 2.0)]
    old = [{"reward": r} for r in (0.0, 1.0, 1.0, 2.0)]
    result = compare(new, old, groups)
    assert result["all"] == {"wins": 2, "losses": 1, "ties": 1, "win_rate": 2 / 3}
    assert result["helpful"]["win_rate"] == 0.5 and result["safety"] == {"wins": 1, "losses": 0, "ties": 1,
                                                                        "win_rate": 1.0}
    with pytest.raises(ValueError, match="one answer per prompt"):
        compare(new, old[:3], groups)


def _answers(n: int, shift: float) -> list[dict]:
    return [{"answer": f"answer {i} <b>&</b>", "refused": i % 3 == 0, "helpful": math.sin(i) + shift,
             "safety": math.cos(i) - shift, "reward": math.sin(i) + shift, "unsafe": False} for i in range(n)]


def synthetic_run(full: bool = True) -> dict:
    """A run as stages/evaluation.collect_run reads it: every kind of data the report draws from."""
    versions = [
        {"id": "base/v1", "stage": "base", "parents": [], "metrics": {"parameters": 10, "oracle_helpful_accuracy": 0.1,
                                                                      "oracle_examples": [{"prompt": "p", "answer": "a"}]}},
        {"id": "sft/v1", "stage": "sft", "parents": ["base/v1"],
         "metrics": {"train_loss": 1.5, "oracle_helpful_accuracy": 0.3, "history": [{"step": 1}],
                     "oracle_examples": [{"prompt": "p", "answer": "b"}]}, "wall_time_s": 3.0},
    ]
    run = {"recipe": "synthetic", "generated_at": "now", "versions": versions, "rm_evals": {}, "ppo_history": {},
           "suite": None, "real": None}
    if not full:
        return run
    bins = [{"lo": b / 10, "hi": (b + 1) / 10, "n": 3, "predicted": b / 10 + 0.05, "empirical": b / 10}
            for b in range(10)]
    set_metrics = {"n": 12, "accuracy": 0.7, "calibration": {"bins": bins, "ece": 0.05},
                   "per_rating": {"significantly_better": {"n": 3, "accuracy": 1.0}, "better": {"n": 9, "accuracy": 0.6}},
                   "gate": {"precision": 0.8, "recall": 0.5}}
    versions += [
        {"id": "rm-helpful/v1", "stage": "rm-helpful", "parents": ["sft/v1"], "metrics": {"accuracy_helpful": 0.7}},
        {"id": "rm-safety/v1", "stage": "rm-safety", "parents": ["sft/v1"], "metrics": {"accuracy_safety": 0.6}},
        {"id": "rs/v1", "stage": "rs", "parents": ["sft/v1", "rm-helpful/v1", "rm-safety/v1"],
         "metrics": {"heldout_win_rate": 0.6, "best_of_n": {"round 1, T=1": {"n": [1, 2], "max": [0.1, 0.3],
                                                                            "median": [0.1, 0.1], "prompts": 4}}}},
        {"id": "gatt/v1", "stage": "gatt", "parents": ["rs/v1"],  # a stage the report has no code for
         "metrics": {"after_style_turn1": 0.9, "after_style_turn2": 0.7, "before_style_turn1": 0.8,
                     "before_style_turn2": 0.2}},
        {"id": "ppo/v1", "stage": "ppo", "parents": ["gatt/v1", "rm-helpful/v1", "rm-safety/v1"],
         "metrics": {"oracle": {"helpful_accuracy": 0.5}, "kl_last": 0.01}},
    ]
    run["rm_evals"] = {"rm-helpful/v1": {"helpful": set_metrics}, "rm-safety/v1": {"safety": set_metrics}}
    run["ppo_history"] = {"ppo/v1": [{"iteration": i, "reward_mean": 0.1 * i, "kl": 0.01 * i} for i in range(1, 5)]}
    n = 6
    prompts = [{"prompt": f"prompt {i}", "group": "safety" if i % 2 else "helpful",
                "kind": ("harmful", "helpful", "borderline")[i % 3]} for i in range(n)]
    groups = [p["group"] for p in prompts]
    policies = {}
    for vid, shift in (("base/v1", -0.5), ("sft/v1", 0.0), ("rs/v1", 0.2), ("ppo/v1", 0.4)):
        entry = {"ref": vid.replace("/", "@"), "stage": vid.split("/")[0], "answers": _answers(n, shift),
                 "summary": {"reward_mean": shift, "gated_rate": 0.0},
                 "oracle": {"helpful_accuracy": 0.5, "harmful_safe_rate": 0.9, "safety_violation_rate": 0.1,
                            "borderline_false_refusal_rate": 0.2},
                 "kl_sft": {"per_token": abs(shift) / 10}}
        if vid != "sft/v1":
            entry["against_sft"] = {"policy": "sft/v1", **compare(entry["answers"], policies.get("sft/v1", {
                "answers": _answers(n, 0.0)})["answers"], groups)}
        policies[vid] = entry
    run["suite"] = {"settings": {"prompts": n, "threshold": 0.15}, "prompts": prompts, "policies": policies}
    return run


def test_every_plot_is_drawn_when_its_data_exists(tmp_path):
    run = synthetic_run()
    report = build_report(run)
    assert [f.name for f in report.figures] == ["lineage", "rm_accuracy", "calibration", "best_of_n", "ppo",
                                                "safety_scatter", "per_turn"]
    assert report.absent == []
    assert all(f.png.startswith(b"\x89PNG") for f in report.figures)
    assert set(per_turn_series(run["versions"])) == {"gatt/v1: after_style", "gatt/v1: before_style"}
    # the suite's headline, the new stage's metrics, escaped answers side by side
    assert headline(run["suite"]["policies"]["ppo/v1"])["win_sft_all"] is not None
    for text in ("win vs SFT", "KL to SFT (per token)", "stage-gatt", "after_style_turn2", "answer 0 &lt;b&gt;&amp;"):
        assert text in report.html, text
    assert "<script" not in report.html and "http" not in report.html.replace("http-equiv", "")
    html_path, md_path = write_report(run, tmp_path)
    assert html_path == tmp_path / REPORT_HTML and md_path == tmp_path / REPORT_MD
    markdown = md_path.read_text()
    assert "| ppo/v1 |" in markdown and f"]({FILES_DIR}/safety_scatter.png)" in markdown
    assert (tmp_path / FILES_DIR / "lineage.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_absent_plots_are_named_with_their_reason():
    report = build_report(synthetic_run(full=False))
    assert [f.name for f in report.figures] == ["lineage"]
    absent = dict(report.absent)
    assert set(absent) == {"RM accuracy per rating level", "calibration", "best-of-N curves", "PPO reward and KL",
                           "helpfulness vs safety scatter", "adherence per turn (GAtt)"}
    assert "chatalign eval" in absent["helpfulness vs safety scatter"]
    assert "Plots not drawn" in report.html and "no PPO version" in report.markdown
    assert "From each stage&#x27;s manifest" in report.html  # the summary says where its numbers come from
    assert "| p | a | b |" in report.markdown  # the stages' oracle examples, side by side


def assert_opens_cleanly(path: Path, figures: int) -> None:
    result = check(path, CHROMIUM)
    assert result["errors"] == []
    assert all(url.startswith(("file:", "data:")) for url in result["requests"]), result["requests"]
    assert len(result["images"]) == figures
    for image in result["images"]:
        assert image["ok"] and image["width"] > 0 and image["height"] > 0, image
    assert "metrics" in result["tables"] and result["metric_rows"] > 0


@needs_chromium
def test_the_report_opens_in_headless_chromium_offline(tmp_path):
    html_path, _ = write_report(synthetic_run(), tmp_path)
    assert_opens_cleanly(html_path, figures=7)


def test_report_of_an_empty_run_is_a_one_line_error(tmp_path, capsys):
    from stages.cli import main

    assert main(["report", "--recipe", str(TINY), "--set", f"runs_dir={tmp_path}"]) == 2
    assert "no complete versions to report on" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_ends_with_the_suite_and_a_report_that_opens_in_chromium(tiny_rms, tmp_path):
    """The tiny recipe's stages 3 (one round), 4, 5 and 6 (two iterations) on the shared base/SFT/RMs, then the
    suite and the report."""
    from stages.cli import main
    from stages.evaluation import collect_run
    from stages.registry import Registry

    shutil.copytree(tiny_rms, tmp_path, dirs_exist_ok=True)
    sets = ["--set", f"runs_dir={tmp_path}", "--set", "eval.suite_prompts=8", "--set", "rejection_sampling.rounds=1",
            "--set", "ppo.iterations=2"]
    assert main(["pipeline", "--recipe", str(TINY), *sets]) == 0
    root = tmp_path / "tiny"
    suite = json.loads((root / "eval.json").read_text())
    policies = suite["policies"]
    assert list(policies) == ["base/v1", "sft/v1", "rs/v1", "gatt/v1", "distill/v1", "ppo/v1"]
    assert policies["sft/v1"]["kl_sft"]["per_token"] == 0.0 and policies["ppo/v1"]["kl_sft"]["per_token"] >= 0.0
    assert policies["rs/v1"]["against_previous"]["policy"] == "sft/v1"
    assert policies["gatt/v1"]["against_previous"]["policy"] == "rs/v1"
    assert policies["ppo/v1"]["against_previous"]["policy"] == "distill/v1"
    assert policies["rs/v1"]["against_sft"]["policy"] == "sft/v1" and "helpful" in policies["rs/v1"]["against_sft"]
    assert all(len(p["answers"]) == 8 for p in policies.values())
    assert set(suite["reward_models"]) == {"rm-helpful/v1", "rm-safety/v1"}
    assert (root / "eval.md").read_text().count("| rs/v1 |") == 1
    # a second call reuses every entry (nothing changed) and gives the same numbers
    before = (root / "eval.json").read_text()
    assert main(["eval", "--recipe", str(TINY), *sets, "--report"]) == 0
    assert json.loads((root / "eval.json").read_text())["policies"] == json.loads(before)["policies"]
    report = build_report(collect_run(Registry(root)))
    assert {"lineage", "rm_accuracy", "calibration", "best_of_n", "ppo", "safety_scatter"} <= \
        {f.name for f in report.figures}
    assert (root / REPORT_MD).exists()
    if NO_BROWSER:
        pytest.skip(f"the report was built but not opened in a browser: {NO_BROWSER}")
    assert_opens_cleanly(root / REPORT_HTML, figures=len(report.figures))


def test_kl_to_the_reference_is_exact_per_answer_whatever_the_batching():
    """The batched (right-padded) KL equals each answer's own forward pass; the KL to itself is zero."""
    from data.builtin import prompts as builtin_prompts
    from stages import evaluation
    from stages.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    policy, reference = build_tiny_model(tok, seed=1).eval(), build_tiny_model(tok, seed=2).eval()
    conversations = builtin_prompts(split="heldout", n=5, seed=0)
    texts, kls = evaluation.answers_and_kl(policy, tok, reference, conversations, "model", 12, 4)
    assert len(texts) == len(kls) == 5 and all(n > 0 and kl > 0 for kl, n in kls)
    _, same = evaluation.answers_and_kl(policy, tok, policy, conversations, "model", 12, 4)
    assert all(abs(kl) < 1e-5 for kl, _ in same)
    one_by_one = []  # one answer per forward pass: no padding
    for conversation in conversations:
        one_by_one += evaluation.answers_and_kl(policy, tok, reference, [conversation], "model", 12, 1)[1]
    assert [n for _, n in one_by_one] == [n for _, n in kls]
    assert [kl for kl, _ in one_by_one] == pytest.approx([kl for kl, _ in kls], rel=1e-4, abs=1e-6)
