import pytest
import torch
import torch.nn.functional as F

from tinytransformer.model.generation import filter_logits, generate
from tinytransformer.model.transformer import TinyTransformer, attend


def make_model(**kwargs) -> TinyTransformer:
    torch.manual_seed(0)
    options = {"vocab_size": 11, "d_model": 32, "n_heads": 4, "n_layers": 2, "block_size": 16} | kwargs
    return TinyTransformer(**options).eval()


def test_logits_have_one_row_per_position_and_token():
    model = make_model()
    idx = torch.randint(11, (3, 16))
    assert model(idx).shape == (3, 16, 11)


def test_future_tokens_do_not_change_past_logits():
    model = make_model()
    idx = torch.randint(11, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    torch.testing.assert_close(model(idx)[:, :9], model(changed)[:, :9])
    assert not torch.allclose(model(idx)[:, 9:], model(changed)[:, 9:])


def test_positions_matter():
    # Without position embeddings, a permutation of the context would not change the last logits.
    model = make_model()
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    permuted = torch.tensor([[3, 1, 4, 2, 5]])
    assert not torch.allclose(model(idx)[:, -1], model(permuted)[:, -1])


def test_sequences_longer_than_block_size_are_refused():
    with pytest.raises(ValueError, match="block_size"):
        make_model()(torch.zeros(1, 17, dtype=torch.long))


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="divisible"):
        TinyTransformer(vocab_size=5, d_model=30, n_heads=4)


def test_dropout_varies_outputs_in_training_but_not_in_eval():
    model = make_model(dropout=0.3)
    idx = torch.randint(11, (2, 16))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))


def test_n_blocks_are_stacked():
    assert len(make_model(n_layers=3).blocks) == 3


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    model = make_model()
    idx = torch.randint(11, (2, 10))
    full = model(idx)
    logits, cache = model(idx[:, :6], cache=model.empty_cache(2, "cpu"))
    torch.testing.assert_close(logits, full[:, :6])
    for t in range(6, 10):
        step_logits, cache = model(idx[:, t : t + 1], cache=cache, start_pos=t)
        torch.testing.assert_close(step_logits[:, 0], full[:, t], atol=1e-5, rtol=1e-4)


def test_greedy_generation_is_identical_with_and_without_cache_past_block_size():
    model = make_model()
    prompt = torch.tensor([[1, 2, 3]])
    cached = generate(model, prompt, 40, temperature=0, use_cache=True)
    recomputed = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert cached.shape == (1, 43)
    assert torch.equal(cached, recomputed)


def test_generation_with_a_model_compiled_in_place_compiles_nothing():
    """model.compile=true compiles the model in place; sampling must not recompile it for every prompt
    length and cache size (the eager backend: dynamo's tracing is what is counted, no code generation)."""
    model = make_model()
    expected = generate(model, torch.tensor([[1, 2, 3]]), 20, temperature=0)
    model.compile(backend="eager")
    before = sum(torch._dynamo.utils.counters["frames"].values())
    assert torch.equal(generate(model, torch.tensor([[1, 2, 3]]), 20, temperature=0), expected)
    assert sum(torch._dynamo.utils.counters["frames"].values()) == before
    model(torch.tensor([[1, 2, 3]]))  # while a direct call is compiled: the counter does see compiles
    assert sum(torch._dynamo.utils.counters["frames"].values()) > before


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = make_model()
    prompt = torch.tensor([[1, 2]])

    def sample(seed):
        return generate(model, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_generation_leaves_the_model_in_its_training_mode():
    model = make_model(dropout=0.1).train()
    generate(model, torch.tensor([[1]]), 3)
    assert model.training


def test_top_k_keeps_the_k_most_likely_tokens():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filter_logits(probs.log(), top_p=0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert filter_logits(probs.log(), top_p=0.4).isfinite().tolist() == [[True, False, False, False]]


def test_under_cpu_bf16_autocast_attention_runs_in_fp32_and_logits_stay_close():
    # CPU flash attention is ~10x slower in bf16 than fp32: under autocast, attend() upcasts q, k, v.
    model = make_model()
    idx = torch.randint(11, (2, 16))
    q, k, v = (torch.randn(2, 4, 16, 8).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, k, v, 0.0, True)
        logits = model(idx)
    assert y.dtype == torch.float32
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(y, expected)
    assert logits.dtype == torch.bfloat16  # the head's matmul did run in bf16
    torch.testing.assert_close(logits.float(), model(idx), atol=0.02, rtol=0.02)


def test_without_autocast_attention_keeps_the_input_dtype():
    q, k, v = (torch.randn(1, 2, 4, 8).bfloat16() for _ in range(3))
    assert attend(q, k, v, 0.0, True).dtype == torch.bfloat16
