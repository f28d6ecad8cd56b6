import numpy as np
import pytest
import torch

from tinytransformer.data.batches import (
    IGNORE_INDEX,
    RandomWindowBatches,
    StridedEvalBatches,
    strided_windows,
)
from tinytransformer.data.simple import SimpleTextDataset, create_dataloader
from tinytransformer.data.tokenizers import create_tokenizer
from tinytransformer.errors import UserError

TOKENS = np.arange(1000, dtype=np.int32) % 251


def test_targets_are_inputs_shifted_by_one():
    x, y = RandomWindowBatches(TOKENS, block_size=8, batch_size=4, seed=0).batch(0)
    assert x.shape == y.shape == (4, 8)
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    starts = x[:, 0].long()
    expected_y = torch.stack([torch.as_tensor(TOKENS[s + 1 : s + 9]) for s in starts.tolist()]).long()
    torch.testing.assert_close(y, expected_y)


def test_batch_stream_is_a_pure_function_of_seed_rank_and_step():
    stream = RandomWindowBatches(TOKENS, 8, 4, seed=1)
    again = RandomWindowBatches(TOKENS, 8, 4, seed=1)
    for step in (0, 5, 123):
        assert torch.equal(stream.batch(step)[0], again.batch(step)[0])
    assert not torch.equal(stream.batch(0)[0], stream.batch(1)[0])
    assert not torch.equal(stream.batch(0)[0], RandomWindowBatches(TOKENS, 8, 4, seed=2).batch(0)[0])
    assert not torch.equal(stream.batch(0)[0], RandomWindowBatches(TOKENS, 8, 4, seed=1, rank=1).batch(0)[0])


def test_a_resumed_stream_continues_where_the_first_left_off():
    first = iter(RandomWindowBatches(TOKENS, 8, 4, seed=3))
    batches = [next(first)[0] for _ in range(6)]
    resumed = iter(RandomWindowBatches(TOKENS, 8, 4, seed=3, start=4))
    assert torch.equal(next(resumed)[0], batches[4])
    assert torch.equal(next(resumed)[0], batches[5])


@pytest.mark.parametrize(
    ("num_tokens", "block_size"), [(100, 8), (101, 8), (9, 8), (20, 7), (1000, 64), (5, 16)]
)
def test_strided_windows_score_every_target_exactly_once(num_tokens, block_size):
    windows = strided_windows(num_tokens, block_size)
    T = min(block_size, num_tokens - 1)
    scored = np.zeros(num_tokens - 1, dtype=int)
    for i, (start, first) in enumerate(windows):
        assert start + T <= num_tokens - 1
        scored[start + first : start + T] += 1
        if i > 0:
            assert first >= block_size // 2  # at least block_size/2 tokens of context
    assert scored.tolist() == [1] * (num_tokens - 1)


def test_eval_batches_mask_context_positions_and_split_across_ranks():
    full = list(StridedEvalBatches(TOKENS[:200], block_size=16, batch_size=4))
    scored = sum(int((y != IGNORE_INDEX).sum()) for _, y in full)
    assert scored == 199
    ranked = [list(StridedEvalBatches(TOKENS[:200], 16, 4, rank=r, world_size=2)) for r in (0, 1)]
    assert sum(int((y != IGNORE_INDEX).sum()) for part in ranked for _, y in part) == 199
    _x, y = full[0]
    assert (y[0] != IGNORE_INDEX).all()  # the first window scores everything
    assert (y[1][:8] == IGNORE_INDEX).all()  # later windows: the first half is context only
    torch.testing.assert_close(y[1][8:], torch.as_tensor(TOKENS[8 + 9 : 8 + 17]).long())


def test_seed_dataset_items_are_shifted_windows():
    tokenizer = create_tokenizer("simple")
    text = "The cat sat on the mat. The cat sat on the hat."
    dataset = SimpleTextDataset(text, tokenizer, block_size=8)
    tokens = tokenizer.encode(text)
    assert len(dataset) == len(tokens) - 8
    x, y = dataset[2]
    assert x.tolist() == tokens[2:10] and y.tolist() == tokens[3:11]
    loader = create_dataloader(dataset, batch_size=2, shuffle=False)
    xb, _yb = next(iter(loader))
    assert xb.shape == (2, 8) and xb[0].tolist() == tokens[0:8]


def test_seed_dataset_refuses_text_shorter_than_a_window():
    with pytest.raises(UserError, match="block_size=8"):
        SimpleTextDataset("The cat", create_tokenizer("simple"), block_size=8)


def test_nonoverlapping_protocol_scores_every_position_of_back_to_back_windows():
    batches = list(StridedEvalBatches(TOKENS[:101], 16, 4, protocol="nonoverlapping"))
    x, y = batches[0]
    assert (y != IGNORE_INDEX).all()
    assert x[1, 0].item() == TOKENS[16]
    assert sum(len(b[0]) for b in batches) == 6  # 96 of 100 targets; the partial tail is dropped
