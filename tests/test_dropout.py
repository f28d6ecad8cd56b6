"""The CPU dropout (model/dropout.py) keeps nn.Dropout's semantics: independent Bernoulli keep-masks scaled by
the inverse keep probability, at the same sites, off in eval and generation, reproducible for a seed."""

import math

import pytest
import torch
import torch.nn.functional as F

from tinytransformer.model import TinyTransformer, generate
from tinytransformer.model.dropout import LEVELS, Dropout, drop_level, dropout, keep_mask
from tinytransformer.model.transformer import attend

N = 1 << 20


def five_sigma(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_masks_drop_with_probability_p_and_scale_the_kept_by_its_exact_inverse(p):
    torch.manual_seed(0)
    mask = keep_mask((N,), p, torch.float32)
    q = drop_level(p) / LEVELS
    assert abs(q - p) <= 0.5 / LEVELS
    dropped = (mask == 0).double().mean().item()
    assert abs(dropped - p) < five_sigma(p, N)
    zero, kept = mask.unique().tolist()
    assert zero == 0.0 and kept == pytest.approx(1 / (1 - q), rel=1e-7)
    assert mask.double().mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(q / (1 - q) / N))  # unbiased


def test_every_bit_lane_and_position_drops_alike_and_neighbours_are_independent():
    """Each 64-bit draw feeds four elements: each of the four lanes, and the start and end of a tensor,
    must drop at rate p, and an element's fate must not predict its neighbour's."""
    torch.manual_seed(1)
    p = 0.3
    dropped = (keep_mask((N,), p, torch.float32) == 0).double()
    for lane in range(4):
        assert abs(dropped[lane::4].mean().item() - p) < five_sigma(p, N // 4), lane
    assert abs(dropped[: N // 2].mean().item() - dropped[N // 2 :].mean().item()) < 2 * five_sigma(p, N // 2)
    both = (dropped[:-1] * dropped[1:]).mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / N)


def test_a_seed_gives_the_same_masks_and_another_seed_others():
    def masks(seed):
        torch.manual_seed(seed)
        return keep_mask((4, 64, 128), 0.2, torch.float32)

    assert torch.equal(masks(3), masks(3)) and not torch.equal(masks(3), masks(4))


def test_the_gradient_is_the_mask_and_eval_or_p_zero_is_the_identity():
    x = torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(2)
    y = dropout(x, 0.4, training=True)
    torch.manual_seed(2)
    mask = keep_mask(x.shape, 0.4, x.dtype)
    assert torch.equal(y, x * mask)
    y.sum().backward()
    assert torch.equal(x.grad, mask)
    layer = Dropout(0.4).eval()
    assert layer(x) is x and dropout(x, 0.0, training=True) is x and dropout(x, 0.4, training=False) is x


def test_bf16_activations_get_bf16_masks_with_the_right_drop_rate():
    torch.manual_seed(3)
    y = dropout(torch.ones(N, dtype=torch.bfloat16), 0.2, training=True)
    assert y.dtype == torch.bfloat16
    assert abs((y == 0).double().mean().item() - 0.2) < five_sigma(0.2, N)
    assert set(y.unique().float().tolist()) == {0.0, 1.25}


def test_compiled_dropout_draws_the_eager_masks_and_is_off_in_eval():
    """model.compile=true: Inductor must neither change the masks (their rate, scale and seed) nor the
    full int64 range of their random bits."""
    layer = Dropout(0.25)
    compiled = torch.compile(layer)
    x = torch.ones(N)
    try:
        torch.manual_seed(4)
        y = compiled(x)
        torch.manual_seed(4)
        assert torch.equal(y, layer(x))
        assert abs((y == 0).double().mean().item() - 0.25) < five_sigma(0.25, N)
        assert set(y.unique().tolist()) == {0.0, torch.tensor(4 / 3).item()}  # 4/3 in fp32
        layer.eval()
        assert torch.equal(compiled(x), x)
    finally:
        torch._dynamo.reset()


def test_other_devices_and_ps_finer_than_16_bits_keep_torchs_own_dropout(monkeypatch):
    seen = []
    monkeypatch.setattr(F, "dropout", lambda x, p, training: seen.append((x.device.type, p)) or x)
    dropout(torch.empty(4, 4, device="meta"), 0.1, training=True)
    dropout(torch.empty(4, 4), 1e-6, training=True)  # would round to no dropout at all
    dropout(torch.empty(4, 4), 0.1, training=True)
    assert seen == [("meta", 0.1), ("cpu", 1e-6)]


def test_attention_dropout_drops_the_attention_weights_after_the_softmax():
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    assert torch.allclose(attend(q, k, v, 0.0, True), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.manual_seed(5)
    out = attend(q, k, v, 0.3, True)
    torch.manual_seed(5)
    mask = keep_mask((2, 3, 16, 16), 0.3, torch.float32)
    future = torch.ones(16, 16, dtype=torch.bool).triu(1)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(future, float("-inf")).softmax(-1)
    assert torch.allclose(out, (weights * mask) @ v, atol=1e-6)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls, the softmax in fp32: the same masks
        low = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3, True)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), (weights * mask) @ v, atol=0.05)


def test_dropout_is_at_every_site_in_training_and_off_in_eval_and_generation():
    model = TinyTransformer(vocab_size=20, d_model=32, n_heads=2, n_layers=2, block_size=16, dropout=0.3)
    idx = torch.randint(0, 20, (4, 16))
    sites = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(sites) == 1 + 2 * 2 and all(m.p == 0.3 for m in sites)  # embeddings, each block's two
    model.train()
    torch.manual_seed(6)
    a = model(idx)
    torch.manual_seed(7)
    assert not torch.allclose(a, model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))
    model.train()  # as mid-training, when samples are drawn: generate() turns dropout off, then back on
    outputs = []
    for global_seed in (8, 9):
        torch.manual_seed(global_seed)
        sampler = torch.Generator().manual_seed(0)
        outputs.append(generate(model, idx[:1, :4], max_new_tokens=8, generator=sampler))
    assert torch.equal(*outputs) and model.training
