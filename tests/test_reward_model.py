"""The reward model: built from a causal LM, saved so AutoModelForSequenceClassification scores it the
same, read at the last real token, chosen and rejected in one pass, truncated from the left, and
trained with the margin ranking loss (full and LoRA)."""
from types import SimpleNamespace

import pytest
import torch

from data.records import Preference
from reward.loss import margins_for, ranking_loss, safety_auxiliary_loss
from reward.model import (PairLoss, build_reward_model, collate_pairs, encode_pairs, encode_response, merged,
                          pad_right)
from reward.scorer import RewardScorer, load_scorer
from stages.finetune import with_lora
from stages.recipe import LoraSection
from stages.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("lm")
    model = build_tiny_model(tokenizer, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def visible_rm(lm_dir):
    """An RM whose head has unit-scale weights, so scores differ enough for comparisons to mean something."""
    model = build_reward_model(lm_dir)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(1)))
    return model.eval()


PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another one, please?"}],
           [{"role": "user", "content": "Hi"}]]
RESPONSES = ["4.", "Blue, the colour of a clear sky at noon.", "Hello! How can I help?"]


def test_saved_rm_loads_with_auto_class_and_scores_the_same(tmp_path, lm_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    rm = visible_rm(lm_dir)
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    assert rm.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    rm.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))

    ours = RewardScorer(rm, tokenizer, batch_size=3).score(PROMPTS, RESPONSES)  # one padded batch
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), num_labels=1).eval()
    ids = [encode_response(tokenizer, p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    with torch.no_grad():
        input_ids, attention_mask = pad_right(ids, tokenizer.pad_token_id)
        theirs_padded = loaded(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
        theirs_alone = torch.stack([loaded(input_ids=torch.tensor([s])).logits[0, 0] for s in ids])
    assert ours.abs().max() > 1e-2  # the comparison is not between zeros
    torch.testing.assert_close(ours, theirs_padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs_alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(load_scorer(tmp_path, device="cpu").score(PROMPTS, RESPONSES), ours, atol=1e-5, rtol=0)


def test_score_reads_the_last_non_pad_token(lm_dir, tokenizer):
    rm = visible_rm(lm_dir)
    scorer = RewardScorer(rm, tokenizer, batch_size=1)
    alone = scorer.score(PROMPTS, RESPONSES)
    scorer.batch_size = 8
    batched = scorer.score(PROMPTS, RESPONSES)  # the shorter ones now carry padding
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)

    # the score is the head applied to the hidden state of the last real token
    ids = encode_response(tokenizer, PROMPTS[0], RESPONSES[0])[0]
    assert ids[-2:] == tokenizer.convert_tokens_to_ids(["<|im_end|>", "Ċ"])  # ChatML's end of turn
    with torch.no_grad():
        hidden = rm.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        assert float(rm.score(hidden)) == pytest.approx(float(alone[0]), abs=1e-5)

    # what the pad token's embedding holds cannot matter
    with torch.no_grad():
        rm.model.embed_tokens.weight[tokenizer.pad_token_id].normal_(0, 10.0)
    torch.testing.assert_close(scorer.score(PROMPTS, RESPONSES), alone, atol=1e-5, rtol=0)


def pairs_for_test(n=4):
    ratings = ["significantly_better", "better", "slightly_better", None]
    return [Preference(prompt=[{"role": "user", "content": f"Question {i}?"}], chosen=f"Answer {i}." * (i + 1),
                       rejected="No.", rating=ratings[i % 4], chosen_safe=True, rejected_safe=i % 2 == 0)
            for i in range(n)]


def test_chosen_and_rejected_share_one_forward_pass(lm_dir, tokenizer):
    rm = visible_rm(lm_dir)
    examples, stats = encode_pairs(tokenizer, pairs_for_test(4))
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 8 and stats.pairs == 4
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()

    calls = []
    hook = rm.register_forward_hook(lambda module, args, output: calls.append(1))
    loss_sum, units, extra = PairLoss("small")(rm, batch)
    hook.remove()
    assert len(calls) == 1 and int(units) == 4 and 0 <= extra["correct"] <= 4
    scores = RewardScorer(rm, tokenizer).score_pairs(pairs_for_test(4))  # the same scores, scored apart
    expected = ranking_loss(scores[0], scores[1], margins_for([p.rating for p in pairs_for_test(4)], table="small"),
                            reduction="sum")
    assert float(loss_sum) == pytest.approx(float(expected), abs=1e-4)


def test_long_prompts_lose_their_oldest_tokens(tokenizer):
    prompt = [{"role": "user", "content": "blah " * 100 + "so, what is the answer?"}]
    full, cut = encode_response(tokenizer, prompt, "The answer is 42.")
    assert not cut
    ids, cut = encode_response(tokenizer, prompt, "The answer is 42.", max_length=40)
    assert cut and len(ids) == 40 and ids == full[-40:]
    assert tokenizer.decode(ids).endswith("The answer is 42.<|im_end|>\n")


class FixedScores(torch.nn.Module):
    """Stands in for an RM: returns given scores for the 2B rows of a batch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.nn.Parameter(torch.tensor(scores))

    def forward(self, input_ids, attention_mask, use_cache=False):
        return SimpleNamespace(logits=self.scores.unsqueeze(-1))


def test_pair_loss_matches_the_ranking_loss_on_hand_values(tokenizer):
    pairs = pairs_for_test(4)
    pairs[3].margin = 2.5  # an explicit margin wins over the table
    batch = collate_pairs(encode_pairs(tokenizer, pairs)[0], tokenizer.pad_token_id)
    chosen, rejected = [2.0, 0.5, -1.0, 3.0], [1.0, 1.0, -2.0, 0.0]
    model = FixedScores(chosen + rejected)

    loss_sum, units, extra = PairLoss("large")(model, batch)
    margins = torch.tensor([3.0, 2.0, 1.0, 2.5])  # Table 27 "large", then the explicit one
    expected = ranking_loss(torch.tensor(chosen), torch.tensor(rejected), margins, reduction="sum")
    assert float(loss_sum) == pytest.approx(float(expected), rel=1e-6)
    assert int(units) == 4 and extra == {"correct": 3.0}

    with_aux, _, extra = PairLoss("large", aux_weight=0.5)(model, batch)
    safe = [p.chosen_safe for p in pairs] + [p.rejected_safe for p in pairs]
    aux = safety_auxiliary_loss(torch.tensor(chosen + rejected), safe, 0.5)
    assert float(with_aux) == pytest.approx(float(expected + 4 * aux), rel=1e-6)
    assert extra["aux_loss"] == pytest.approx(4 * float(aux), rel=1e-6)


def easy_pairs(n):
    # the preferred answer always ends "good", the other "bad": one token decides
    return [Preference(prompt=[{"role": "user", "content": f"Rate {i}"}], chosen=f"{i} good", rejected=f"{i} bad",
                       rating="better") for i in range(n)]


def train_a_few_steps(model, tokenizer, steps=12, lr=3e-3):
    batch = collate_pairs(encode_pairs(tokenizer, easy_pairs(8))[0], tokenizer.pad_token_id)
    loss_fn = PairLoss("none")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss_sum, units, _ = loss_fn(model, batch)
        (loss_sum / units).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss_sum.detach() / units))
    return losses


def test_full_fine_tuning_learns_an_easy_preference(lm_dir, tokenizer):
    torch.manual_seed(0)
    losses = train_a_few_steps(build_reward_model(lm_dir), tokenizer, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_lora_reward_model_trains_and_saves_merged(tmp_path, lm_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    lora = LoraSection(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = with_lora(build_reward_model(lm_dir), lora, task_type="SEQ_CLS")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(".score." in n for n in trainable)
    assert not any("embed_tokens" in n or "mlp" in n for n in trainable)
    losses = train_a_few_steps(model, tokenizer, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]

    model.eval()
    ours = RewardScorer(model, tokenizer).score(PROMPTS, RESPONSES)
    plain = merged(model)
    assert type(plain).__name__ == "LlamaForSequenceClassification"
    plain.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), num_labels=1)
    torch.testing.assert_close(RewardScorer(loaded, tokenizer).score(PROMPTS, RESPONSES), ours, atol=1e-5, rtol=0)


def test_top_layers_freezes_everything_below_the_top_blocks(lm_dir):
    from reward.model import freeze_below_top_layers

    model = build_reward_model(lm_dir)
    freeze_below_top_layers(model, 1)
    backbone = model.model
    assert not any(p.requires_grad for p in backbone.embed_tokens.parameters())
    assert not any(p.requires_grad for p in backbone.layers[0].parameters())
    assert all(p.requires_grad for p in backbone.layers[-1].parameters())
    assert all(p.requires_grad for p in backbone.norm.parameters())
    assert model.score.weight.requires_grad
    # backward stops at the lowest trainable block: the frozen ones get no gradient at all
    ids = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    assert backbone.layers[0].self_attn.q_proj.weight.grad is None
    assert backbone.layers[-1].self_attn.q_proj.weight.grad is not None
    with pytest.raises(ValueError, match="top_layers is 9 but the model has 2 blocks"):
        freeze_below_top_layers(build_reward_model(lm_dir), 9)


def test_platt_calibration_fits_known_parameters_and_keeps_the_order():
    from reward.calibration import Platt, fit_platt, labelled_answers

    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(4000, generator=generator)
    true_scale, true_bias = 3.0, -1.0
    labels = torch.rand(4000, generator=generator) < torch.sigmoid(true_scale * raw + true_bias)
    platt = fit_platt(raw, labels)
    assert platt.scale == pytest.approx(true_scale, rel=0.15) and platt.bias == pytest.approx(true_bias, abs=0.2)
    assert torch.equal(torch.argsort(platt(raw)), torch.argsort(raw))
    # separable data still gives a finite fit (Platt's smoothed targets)
    separable = fit_platt([-2.0, -1.0, 1.0, 2.0], [False, False, True, True])
    assert 0 < separable.scale < 100 and torch.sigmoid(separable(torch.tensor(-2.0))) < 0.25  # target 1/(2+2)
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="scale is .* <= 0"):
        fit_platt([2.0, 1.0, -1.0, -2.0], [False, False, True, True])
    with pytest.raises(ValueError, match="finite scale > 0"):
        Platt(scale=0.0)
    assert Platt.from_dict(platt.to_dict()) == platt
    pairs = [Preference(prompt=[{"role": "user", "content": "q"}], chosen="no", rejected="sure, here", chosen_safe=True,
                        rejected_safe=False),
             Preference(prompt=[{"role": "user", "content": "q"}], chosen="no", rejected="x")]
    conversations, answers, labels = labelled_answers(pairs)
    assert answers == ["no", "sure, here"] and labels == [True, False] and len(conversations) == 2


def test_load_scorer_applies_the_manifest_calibration(tmp_path, lm_dir, tokenizer):
    import json

    model = build_reward_model(lm_dir)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    conversation, answer = [{"role": "user", "content": "hi"}], "hello"
    raw = load_scorer(tmp_path, device="cpu").score([conversation], [answer])
    (tmp_path / "manifest.json").write_text(json.dumps({"reward_model": {"calibration": {"scale": 2.0, "bias": -1.0}}}))
    calibrated = load_scorer(tmp_path, device="cpu").score([conversation], [answer])
    assert torch.allclose(calibrated, 2.0 * raw - 1.0, atol=1e-5)
    assert torch.allclose(load_scorer(tmp_path, device="cpu", calibrated=False).score([conversation], [answer]), raw)


def test_recipe_refuses_top_layers_with_lora():
    from stages.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="top_layers.*exclude each other"):
        load_recipe("recipes/tiny.yaml", overrides=["reward.top_layers=1", "reward.train.lora.enabled=true"])
