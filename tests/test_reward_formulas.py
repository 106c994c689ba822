"""Unit and property tests of the reward formulas: margin ranking loss, safety auxiliary loss,
safety-gated combination, whitening and the KL-penalised per-token rewards."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data.records import RATINGS
from reward.combine import Whitener, combine, kl_penalized_rewards
from reward.loss import (MARGIN_TABLES, margins_for, pairwise_accuracy, ranking_loss,
                         safety_auxiliary_loss)

finite = st.floats(min_value=-20, max_value=20, allow_nan=False, allow_infinity=False)


def neg_log_sigmoid(z: float) -> float:
    return math.log1p(math.exp(-z))


# --- margin tables and ranking loss ------------------------------------------------------------

def test_margin_tables_match_paper_table_27():
    assert MARGIN_TABLES["none"] == {r: 0.0 for r in RATINGS}
    assert [MARGIN_TABLES["small"][r] for r in RATINGS] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert [MARGIN_TABLES["large"][r] for r in RATINGS] == [3, 2, 1, 0]


@pytest.mark.parametrize("table, rating, expected", [
    ("none", "better", neg_log_sigmoid(1.0)),                       # -log σ(2 - 1 - 0)
    ("small", "better", neg_log_sigmoid(1.0 - 2 / 3)),              # -log σ(1/3)
    ("large", "better", neg_log_sigmoid(-1.0)),                     # -log σ(2 - 1 - 2)
    ("large", "significantly_better", neg_log_sigmoid(-2.0)),       # -log σ(-2)
    ("small", "slightly_better", neg_log_sigmoid(2 / 3)),
    ("large", "negligibly_better", neg_log_sigmoid(1.0)),
])
def test_ranking_loss_hand_computed(table, rating, expected):
    margins = margins_for([rating], table=table)
    loss = ranking_loss(torch.tensor([2.0]), torch.tensor([1.0]), margins)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ranking_loss_reductions():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    margins = margins_for(["better", None], table="large")
    per_pair = ranking_loss(chosen, rejected, margins, reduction="none")
    assert per_pair.tolist() == pytest.approx([neg_log_sigmoid(-1.0), neg_log_sigmoid(-0.5)], rel=1e-6)
    assert ranking_loss(chosen, rejected, margins).item() == pytest.approx(per_pair.mean().item())
    assert ranking_loss(chosen, rejected, margins, reduction="sum").item() == pytest.approx(
        per_pair.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        ranking_loss(chosen, rejected, margins, reduction="avg")


def test_ranking_loss_is_stable_for_huge_gaps():
    loss = ranking_loss(torch.tensor([-1e4]), torch.tensor([1e4]), reduction="none")
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(2e4)


def test_swapping_chosen_and_rejected_changes_the_loss():
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    assert ranking_loss(chosen, rejected).item() < ranking_loss(rejected, chosen).item()
    assert ranking_loss(chosen, rejected).item() == pytest.approx(neg_log_sigmoid(1.0), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(chosen=finite, rejected=finite, margin=st.floats(min_value=0.01, max_value=5))
def test_positive_margin_never_lowers_the_loss(chosen, rejected, margin):
    c, r = torch.tensor([chosen], dtype=torch.float64), torch.tensor([rejected], dtype=torch.float64)
    with_margin = ranking_loss(c, r, torch.tensor([margin], dtype=torch.float64))
    assert with_margin.item() > ranking_loss(c, r).item()


def test_ranking_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([0.1, 2.0], requires_grad=True)
    ranking_loss(chosen, rejected, margins_for(["better", "slightly_better"], table="small")).backward()
    assert (chosen.grad < 0).all()  # gradient descent raises the chosen score
    assert (rejected.grad > 0).all()  # and lowers the rejected one
    assert torch.allclose(chosen.grad, -rejected.grad)


def test_ranking_loss_refuses_silent_broadcasting():
    with pytest.raises(ValueError, match="squeeze"):
        ranking_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3))


def test_explicit_margins_override_the_table():
    margins = margins_for(["better", "better", None, "significantly_better"],
                          explicit=[0.25, None, 1.5, None], table="large")
    assert margins.tolist() == pytest.approx([0.25, 2.0, 1.5, 3.0])
    assert margins.dtype == torch.float32


def test_missing_rating_gives_zero_margin():
    assert margins_for([None, None], table="large").tolist() == [0.0, 0.0]


def test_unknown_rating_is_an_error_that_names_it_and_the_levels():
    with pytest.raises(ValueError) as error:
        margins_for(["better", "much_better"], table="small")
    message = str(error.value)
    assert "much_better" in message and "pair 1" in message
    assert all(level in message for level in RATINGS)


def test_unknown_table_and_length_mismatch_are_errors():
    with pytest.raises(ValueError, match="huge"):
        margins_for(["better"], table="huge")
    with pytest.raises(ValueError, match="explicit"):
        margins_for(["better", "better"], explicit=[1.0], table="small")


# --- safety auxiliary loss and accuracy ----------------------------------------------------------

def test_safety_auxiliary_loss_hand_computed_and_masks_unknown_labels():
    scores = torch.tensor([0.0, 2.0, -1.0, 100.0])
    loss = safety_auxiliary_loss(scores, [True, False, None, None], weight=0.5)
    # BCE(σ(0), 1) = log 2; BCE(σ(2), 0) = -log(1 - σ(2)) = log(1 + e^2)
    assert loss.item() == pytest.approx(0.5 * (math.log(2) + math.log1p(math.exp(2))) / 2, rel=1e-6)
    as_tensor = safety_auxiliary_loss(scores, torch.tensor([1.0, 0.0, math.nan, math.nan]), weight=0.5)
    assert as_tensor.item() == pytest.approx(loss.item())


def test_safety_auxiliary_loss_pushes_unsafe_scores_below_half():
    scores = torch.tensor([0.5, 0.5], requires_grad=True)
    safety_auxiliary_loss(scores, [True, False]).backward()
    assert scores.grad[0] < 0 < scores.grad[1]


def test_safety_auxiliary_loss_without_labels_is_zero_but_differentiable():
    scores = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = safety_auxiliary_loss(scores, [None, None])
    loss.backward()
    assert loss.item() == 0.0 and scores.grad.tolist() == [0.0, 0.0]


def test_pairwise_accuracy_counts_ties_as_wrong():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 3.0, 1.0])
    assert pairwise_accuracy(chosen, rejected) == 0.5


# --- safety-gated combination --------------------------------------------------------------------

def test_combine_uses_safety_score_on_safety_prompts():
    out = combine(torch.tensor([3.0]), torch.tensor([1.0]), [True])
    assert out.tolist() == [1.0]


def test_combine_gates_unsafe_answers_to_non_safety_prompts():
    unsafe = math.log(0.1 / 0.9)  # R_s = 0.10 < 0.15
    out = combine(torch.tensor([3.0]), torch.tensor([unsafe]), [False])
    assert out.item() == pytest.approx(unsafe)


def test_combine_uses_helpfulness_score_for_safe_answers_to_non_safety_prompts():
    safe = math.log(0.5 / 0.5)  # R_s = 0.5
    out = combine(torch.tensor([3.0, -2.0]), torch.tensor([safe, 4.0]), [False, False])
    assert out.tolist() == [3.0, -2.0]


def test_combine_threshold_boundary_is_strict():
    at_threshold = math.log(0.15) - math.log1p(-0.15)  # R_s == 0.15 exactly (in float64)
    just_below = math.nextafter(at_threshold, -math.inf)
    out = combine(torch.tensor([7.0, 7.0], dtype=torch.float64),
                  torch.tensor([at_threshold, just_below], dtype=torch.float64), [False, False])
    assert out[0].item() == 7.0  # R_s == threshold: not gated, helpfulness score
    assert out[1].item() == just_below  # R_s < threshold: safety score


def test_combine_returns_raw_scores_without_sigmoid_saturation():
    out = combine(torch.tensor([60.0, 0.0]), torch.tensor([0.0, -60.0]), [False, False])
    assert out.tolist() == [60.0, -60.0]  # logit(σ(±60)) would be ±inf in float32


def test_combine_threshold_edges_and_errors():
    helpful, safety = torch.tensor([1.0]), torch.tensor([-30.0])
    assert combine(helpful, safety, [False], threshold=0.0).tolist() == [1.0]
    assert combine(helpful, torch.tensor([30.0]), [False], threshold=1.0).tolist() == [30.0]
    with pytest.raises(ValueError, match="threshold"):
        combine(helpful, safety, [False], threshold=1.5)
    with pytest.raises(ValueError, match="one flag per response"):
        combine(helpful, safety, [False, True])


# --- whitening -----------------------------------------------------------------------------------

batches = st.lists(st.lists(finite, min_size=1, max_size=8), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(batches=batches)
def test_running_whitening_equals_statistics_of_the_concatenation(batches):
    whitener = Whitener("running")
    for batch in batches:
        whitened = whitener.whiten(torch.tensor(batch, dtype=torch.float64))
    seen = torch.tensor([v for batch in batches for v in batch], dtype=torch.float64)
    mean, std = seen.mean().item(), seen.std(correction=0).item()
    assert whitener.count == seen.numel()
    assert whitener.mean == pytest.approx(mean, abs=1e-9)
    assert whitener.std == pytest.approx(std, rel=1e-6, abs=1e-9)
    expected = (torch.tensor(batches[-1], dtype=torch.float64) - mean) / (std + whitener.eps)
    assert torch.allclose(whitened, expected, rtol=1e-6, atol=1e-6)


def test_running_whitening_of_first_batch_equals_batch_whitening():
    x = torch.tensor([1.0, 2.0, 4.0, 9.0])
    assert torch.allclose(Whitener("running").whiten(x), Whitener("batch").whiten(x))


def test_batch_whitening_gives_zero_mean_unit_std():
    whitened = Whitener("batch").whiten(torch.tensor([3.0, -1.0, 10.0, 2.5, 0.0]))
    assert whitened.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert whitened.std(correction=0).item() == pytest.approx(1.0, rel=1e-5)


def test_fixed_whitening_uses_given_statistics_and_never_updates():
    whitener = Whitener("fixed", mean=1.0, std=2.0, eps=0.0)
    assert whitener.whiten(torch.tensor([1.0, 5.0, -3.0])).tolist() == [0.0, 2.0, -2.0]
    assert whitener.whiten(torch.tensor([100.0])).tolist() == [49.5]
    with pytest.raises(ValueError, match="mean and std"):
        Whitener("fixed", mean=1.0)
    with pytest.raises(ValueError, match="mode"):
        Whitener("ema")


def test_running_whitening_state_round_trips():
    whitener = Whitener("running")
    whitener.whiten(torch.tensor([1.0, 2.0, 3.0]))
    resumed = Whitener("running")
    resumed.load_state_dict(whitener.state_dict())
    x = torch.tensor([0.5, 7.0])
    assert torch.allclose(resumed.whiten(x), whitener.whiten(x))


# --- KL-penalised per-token rewards --------------------------------------------------------------

def test_kl_rewards_put_score_on_last_response_token_and_kl_elsewhere():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -0.1], [-0.3, -0.2, -0.4, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -0.7], [-0.1, -0.6, -0.4, -3.0]])
    # row 0: a prompt token first, then 2 response tokens, then padding; row 1: 3 response + padding
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0]])
    score, beta = torch.tensor([5.0, -2.0]), 0.1
    rewards, kl = kl_penalized_rewards(score, logprobs, ref_logprobs, mask, beta)
    log_ratio = logprobs - ref_logprobs
    expected = torch.tensor([
        [0.0, -beta * log_ratio[0, 1], -beta * log_ratio[0, 2] + 5.0, 0.0],
        [-beta * log_ratio[1, 0], -beta * log_ratio[1, 1], -beta * log_ratio[1, 2] - 2.0, 0.0],
    ])
    assert torch.allclose(rewards, expected)
    assert torch.allclose(kl, (log_ratio * mask).sum(dim=1))
    # summed over a sequence the rewards are the paper's R = score - β·KL
    assert torch.allclose(rewards.sum(dim=1), score - beta * kl)


def test_kl_rewards_k3_estimator():
    logprobs, ref_logprobs = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]])
    rewards, kl = kl_penalized_rewards(torch.tensor([0.0]), logprobs, ref_logprobs,
                                       torch.ones(1, 2), beta=1.0, kl_estimator="k3")
    # r = π_0/π_θ: e^-1 and e^1; k3 = (r - 1) - log r
    k3 = [math.exp(-1) - 1 + 1, math.exp(1) - 1 - 1]
    assert rewards[0].tolist() == pytest.approx([-k3[0], -k3[1]], rel=1e-6)
    assert kl.item() == pytest.approx(sum(k3), rel=1e-6)
    assert min(k3) >= 0


def test_kl_rewards_are_detached_and_validated():
    logprobs = torch.zeros(1, 3, requires_grad=True)
    rewards, _ = kl_penalized_rewards(torch.tensor([1.0]), logprobs, torch.zeros(1, 3),
                                      torch.ones(1, 3), beta=0.01)
    assert not rewards.requires_grad
    with pytest.raises(ValueError, match=r"sequences \[1\]"):
        kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3),
                             torch.tensor([[1, 1, 0], [0, 0, 0]]), beta=0.01)
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalized_rewards(torch.zeros(1), torch.zeros(1, 3), torch.zeros(1, 3),
                             torch.ones(1, 3), beta=0.01, kl_estimator="k2")


def test_fixed_whitening_refuses_a_zero_or_non_finite_std():
    for std in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="std > 0"):
            Whitener("fixed", mean=0.0, std=std)


def test_a_frozen_whitener_never_moves_the_training_statistics():
    """What a server or an evaluation whitens with: the training whitener's statistics, fixed."""
    training = Whitener("running")
    training.whiten(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    state = training.state_dict()
    served = training.frozen()
    before = served.whiten(torch.tensor([2.0]))
    for _ in range(3):
        served.whiten(torch.tensor([100.0, -50.0]))
    assert training.state_dict() == state and served.whiten(torch.tensor([2.0])) == before
    assert served.mode == "fixed" and served.mean == training.mean and served.std == training.std
    # a running whitener can also whiten without updating
    training.whiten(torch.tensor([1000.0]), update=False)
    assert training.state_dict() == state
    with pytest.raises(ValueError, match="batch"):
        Whitener("batch").frozen()


def test_gate_precision_and_recall_on_hand_made_scores():
    from reward.combine import gate_precision_recall

    logit = math.log(0.15 / 0.85)
    scores = [logit - 1, logit - 0.1, logit + 0.1, 3.0, logit - 2, -5.0, 2.0]
    is_safe = [False, False, False, True, True, False, True]
    # flagged (σ < 0.15): indices 0, 1, 4, 5; unsafe: 0, 1, 2, 5 -> tp 3, precision 3/4, recall 3/4
    got = gate_precision_recall(scores, is_safe, 0.15)
    assert got["flagged"] == 4 and got["unsafe"] == 4
    assert got["precision"] == pytest.approx(0.75) and got["recall"] == pytest.approx(0.75)
    none = gate_precision_recall([3.0, 4.0], [True, True])
    assert none["precision"] is None and none["recall"] is None
    # exactly at the threshold is not flagged (the gate is strict, as combine's)
    assert gate_precision_recall([logit], [False])["flagged"] == 0


def test_reward_function_scores_gates_and_marks_unsafe_answers():
    from reward.combine import RewardFunction

    class Table:
        def __init__(self, table):
            self.table, self.calls = table, 0

        def score(self, conversations, responses):
            self.calls += 1
            return torch.tensor([self.table[r] for r in responses])

    helpful, safety = Table({"a": 1.0, "b": 4.0, "c": -3.0}), Table({"a": 2.0, "b": -2.0, "c": 3.0})
    fn = RewardFunction(helpful, safety, threshold=0.15)
    out = fn([[{"role": "user", "content": "q"}]] * 3, ["a", "b", "c"], [True, False, False])
    assert helpful.calls == safety.calls == 1
    assert out.combined.tolist() == [2.0, -2.0, -3.0] and out.unsafe.tolist() == [False, True, False]
    # selection: the unsafe answer (R_c -2) ranks below the safe one (R_c -3)
    assert max(range(3), key=out.selection_key) == 0 and out.selection_key(2) > out.selection_key(1)
    with pytest.raises(ValueError, match="one of each"):
        fn([[{"role": "user", "content": "q"}]], ["a", "b"], [False])
    with pytest.raises(ValueError, match="probability"):
        RewardFunction(helpful, safety, threshold=1.5)


def test_rejection_sampling_takes_its_rewards_from_the_shared_function(monkeypatch):
    """Stage 3 builds reward.combine.RewardFunction from its RMs and threshold (the rollouts kit does it for every
    stage that samples); it has no reward code of its own."""
    from types import SimpleNamespace

    from reward.combine import RewardFunction
    from stages import rejection_sampling as rs
    from stages import rollouts

    monkeypatch.setattr(rollouts, "load_scorer", lambda path, **kw: ("scorer", str(path)))
    fn = rollouts.load_reward_fn(SimpleNamespace(path="h"), SimpleNamespace(path="s"), batch_size=4, threshold=0.2)
    assert isinstance(fn, RewardFunction) and fn.threshold == 0.2
    assert fn.helpful == ("scorer", "h") and fn.safety == ("scorer", "s")
    assert rs.load_reward_fn is rollouts.load_reward_fn
    assert not hasattr(rs, "combine")
