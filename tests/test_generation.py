"""The sampling engine equals plain HF decoding, reuses each prompt's prefill, and is reproducible."""
import importlib.util

import pytest
import torch

from stages.generation import (Completion, SamplingConfig, default_stop_token_ids, generate, get_engine,
                               sample_tokens)
from stages.tiny import build_tiny_model, build_tiny_tokenizer

TEXTS = ["hi", "a longer prompt with several words in it", "mid-sized one", "x",
         "the quick brown fox jumps over the lazy dog again and again"]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model(tok)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.encode(text) for text in TEXTS]


def hf_greedy(model, prompt, max_new_tokens, stop_ids):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def token_lists(results):
    return [[c.token_ids for c in completions] for completions in results]


def test_greedy_equals_hf_generate_per_prompt(model, tok, prompts):
    cfg = SamplingConfig(num_samples=2, temperature=0, max_new_tokens=12, batch_size=6)
    results = generate(model, tok, prompts, cfg)
    stop_ids = default_stop_token_ids(tok, model)
    for prompt, completions in zip(prompts, results):
        expected = hf_greedy(model, prompt, 12, stop_ids)
        assert [c.token_ids for c in completions] == [expected, expected]


def test_rows_that_stop_leave_the_batch_and_the_rest_still_match_hf(model, tok, prompts):
    # A stop token taken from one prompt's greedy path: that row ends early, the others run on.
    stop_token = hf_greedy(model, prompts[1], 12, [-1])[3]
    cfg = SamplingConfig(temperature=0, max_new_tokens=12, batch_size=8, stop_token_ids=[stop_token])
    results = generate(model, tok, prompts, cfg)
    reasons = set()
    for prompt, (completion,) in zip(prompts, results):
        expected = hf_greedy(model, prompt, 12, [stop_token])
        assert completion.token_ids == expected
        reasons.add(completion.finish_reason)
    assert results[1][0].num_tokens <= 4 and results[1][0].finish_reason == "stop"
    assert reasons == {"stop", "length"}


def test_logprobs_equal_teacher_forced_log_softmax(model, tok, prompts):
    cfg = SamplingConfig(num_samples=2, temperature=0.8, top_p=0.9, max_new_tokens=10, return_logprobs=True, seed=3)
    results = generate(model, tok, prompts, cfg)
    with torch.no_grad():
        for prompt, completions in zip(prompts, results):
            for c in completions:
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0].float()
                expected = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(
                    -1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
                torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_same_seed_same_samples_whatever_the_batching(model, tok, prompts):
    cfg = SamplingConfig(num_samples=3, max_new_tokens=8, seed=7)
    base = token_lists(generate(model, tok, prompts, cfg))
    assert token_lists(generate(model, tok, prompts, cfg)) == base
    rebatched = SamplingConfig(num_samples=3, max_new_tokens=8, seed=7, batch_size=2)  # K > batch: chunked
    assert token_lists(generate(model, tok, prompts, rebatched)) == base
    # A slice keyed by its global indices reproduces the full run (resumed rejection sampling).
    assert token_lists(generate(model, tok, prompts[2:], cfg, prompt_keys=[2, 3, 4])) == base[2:]
    other = token_lists(generate(model, tok, prompts, SamplingConfig(num_samples=3, max_new_tokens=8, seed=8)))
    assert other != base
    # The K samples of a prompt are distinct draws, not copies.
    assert all(len({tuple(s) for s in samples}) > 1 for samples in base)


def test_results_in_prompt_order_with_k_samples(model, tok, prompts):
    cfg = SamplingConfig(num_samples=4, max_new_tokens=5, seed=1, batch_size=8)
    results = generate(model, tok, prompts, cfg)
    assert len(results) == len(prompts) and all(len(c) == 4 for c in results)
    assert all(isinstance(c, Completion) for cs in results for c in cs)
    # Each prompt generated alone gives its own row: the order is the prompts' order, not the length order.
    for index in (0, 3):
        alone = generate(model, tok, [prompts[index]], cfg, prompt_keys=[index])
        assert token_lists(alone)[0] == token_lists(results)[index]


def test_stop_token_ends_a_sample_and_is_counted(model, tok, prompts):
    cfg = SamplingConfig(num_samples=16, max_new_tokens=40, seed=0, batch_size=32)
    stop_ids = set(default_stop_token_ids(tok, model))
    assert tok.eos_token_id in stop_ids
    completions = [c for cs in generate(model, tok, prompts, cfg) for c in cs]
    for c in completions:
        assert c.num_tokens == len(c.token_ids)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in stop_ids and not stop_ids & set(c.token_ids[:-1])
            assert tok.eos_token not in c.text  # counted in num_tokens, left out of the text
        else:
            assert c.finish_reason == "length" and c.num_tokens == 40 and not stop_ids & set(c.token_ids)
    assert {c.finish_reason for c in completions} == {"stop", "length"}


def test_tiny_top_p_is_greedy(model, tok, prompts):
    greedy = generate(model, tok, prompts, SamplingConfig(temperature=0, max_new_tokens=8))
    nucleus = generate(model, tok, prompts, SamplingConfig(num_samples=3, temperature=1.0, top_p=1e-6,
                                                           max_new_tokens=8))
    for (g,), samples in zip(token_lists(greedy), token_lists(nucleus)):
        assert samples == [g, g, g]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    uniforms = torch.linspace(0, 0.999999, 2001, dtype=torch.float64)
    drawn = sample_tokens(logits.expand(len(uniforms), -1), 1.0, 0.8, uniforms)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are cut
    assert abs((drawn == 0).double().mean().item() - 0.5 / 0.8) < 1e-2  # renormalised within the nucleus
    drawn = sample_tokens(logits.expand(len(uniforms), -1), 1.0, 0.81, uniforms)
    assert set(drawn.tolist()) == {0, 1, 2}
    full = sample_tokens(logits.expand(len(uniforms), -1), 1.0, 1.0, uniforms)
    assert torch.allclose(torch.bincount(full, minlength=4).double() / len(uniforms), probs[0].double(), atol=1e-2)


def test_each_prompt_is_prefilled_once(model, tok, prompts):
    prefilled_rows = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        if kwargs["past_key_values"].get_seq_length() == 0:  # an empty cache: this call encodes prompts
            prefilled_rows.append(kwargs["input_ids"].shape[0])
        return original_forward(*args, **kwargs)

    model.forward = recording_forward
    try:
        # K=8 > batch_size=3: the samples of one prompt span several decoding chunks, still one prefill.
        generate(model, tok, prompts, SamplingConfig(num_samples=8, max_new_tokens=4, batch_size=3))
        assert sum(prefilled_rows) == len(prompts)
        prefilled_rows.clear()
        generate(model, tok, prompts, SamplingConfig(num_samples=2, max_new_tokens=4, batch_size=4))
        assert sum(prefilled_rows) == len(prompts) and len(prefilled_rows) == 3  # 2 prompts x K=2 per batch
    finally:
        del model.forward


def test_training_mode_restored(model, tok, prompts):
    model.train()
    generate(model, tok, prompts[:1], SamplingConfig(max_new_tokens=2))
    assert model.training
    model.eval()


def test_config_validation_and_unknown_backend():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="unknown"):
        get_engine("tgi")
    assert get_engine("hf").name == "hf"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_missing_gives_a_clear_error():
    with pytest.raises(ImportError, match="pip install"):
        get_engine("vllm")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                    reason="needs vllm and a GPU")
def test_vllm_engine_shapes(tmp_path, tok):
    model = build_tiny_model(tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = SamplingConfig(num_samples=2, max_new_tokens=6, return_logprobs=True)
    results = get_engine("vllm").generate(str(tmp_path), tok, [tok.encode(t) for t in TEXTS[:2]], cfg)
    assert [len(c) for c in results] == [2, 2]
    assert all(len(c.logprobs) == c.num_tokens for cs in results for c in cs)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.3, 2.0])
def test_temperature_changes_the_distribution_as_softmax_of_logits_over_t(temperature):
    """Sampled frequencies match softmax(logits / T) at every T (not only T = 1), and a lower T concentrates
    mass on the top token while a higher one spreads it."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    uniforms = torch.linspace(0, 0.999999, 20001, dtype=torch.float64)
    drawn = sample_tokens(logits.expand(len(uniforms), -1), temperature, 1.0, uniforms)
    freq = torch.bincount(drawn, minlength=4).double() / len(uniforms)
    want = torch.softmax(logits[0].double() / temperature, -1)
    torch.testing.assert_close(freq, want, atol=2e-3, rtol=0)
    top_at_one = torch.softmax(logits[0], -1)[0].item()
    assert (freq[0].item() > top_at_one) == (temperature < 1.0) or temperature == 1.0
