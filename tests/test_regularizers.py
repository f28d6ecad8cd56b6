"""Regularizers that need code: input noise (the input side), label smoothing (the loss side) and
stochastic depth (the model side) do what they say in training, and nothing in evaluation or generation."""

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.data.config import DataConfig
from tinytransformer.data.datamodule import TextDataModule
from tinytransformer.data.tokenizers import MASK_CHAR
from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer
from tinytransformer.model.generation import generate
from tinytransformer.runtime.recipe import train
from tinytransformer.training.regularizers import InputNoise, LabelSmoothing, build_regularizers

RUN = [*TINY_RUN, "trainer.max_steps=20", "test=false"]


def model(seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(vocab_size=11, d_model=16, n_heads=2, n_layers=4, block_size=12)


def noise_datamodule(mask_token: bool) -> TextDataModule:
    dm = TextDataModule(DataConfig(num_chars=6000, block_size=16, batch_size=64), 5, mask_token=mask_token)
    dm.setup()
    return dm


def test_input_noise_masks_and_substitutes_inputs_never_targets_with_the_seeded_generator():
    plain, masked = noise_datamodule(False), noise_datamodule(True)
    # The mask character sorts after every character of the text, so all other ids are the same.
    assert masked.tokenizer.chars == [*plain.tokenizer.chars, MASK_CHAR]
    spec = {"_target_": "tinytransformer.training.regularizers.InputNoise", "mask_prob": 0.2}
    [noise] = build_regularizers({"n": spec | {"substitute_prob": 0.1}}, model(), masked.tokenizer)
    x, y = masked.train_dataloader().batch(3)
    torch.manual_seed(7)
    noisy, targets = noise.inputs(x, y)
    assert targets is y and noisy.shape == x.shape
    assert (noisy == masked.tokenizer.mask_id).float().mean() == pytest.approx(0.2, abs=0.02)
    kept = noisy == x  # a substitute equals the original 1/vocab_size of the time
    assert 1 - kept.float().mean() == pytest.approx(
        0.2 + 0.1 * (1 - 1 / len(masked.tokenizer.chars)), abs=0.02
    )
    torch.manual_seed(7)
    assert torch.equal(noise.inputs(x, y)[0], noisy)  # the LanguageModel seeds each batch: exact resume
    with pytest.raises(
        UserError, match=r"^regularizers.n: mask_prob > 0 needs a vocabulary with a mask token"
    ):
        build_regularizers({"n": spec}, model(), plain.tokenizer)
    assert not InputNoise(0.0, 0.1).needs_mask_token and InputNoise(0.1, 0.0).needs_mask_token
    # Substitution alone runs on a vocabulary without a mask token.
    [substitute] = build_regularizers(
        {"n": spec | {"mask_prob": 0.0, "substitute_prob": 0.3}}, model(), plain.tokenizer
    )
    substituted, _ = substitute.inputs(x, y)
    assert 1 - (substituted == x).float().mean() == pytest.approx(
        0.3 * (1 - 1 / len(plain.tokenizer.chars)), abs=0.03
    )


def test_a_run_with_input_noise_reserves_the_mask_token_and_noises_training_batches_only(
    tmp_path, monkeypatch
):
    calls = []
    inputs = InputNoise.inputs
    monkeypatch.setattr(InputNoise, "inputs", lambda self, x, y: calls.append(x.shape) or inputs(self, x, y))
    results = train(compose_train([*RUN, "regularization=input_noise", "test=true"], tmp_path), tmp_path)
    assert len(calls) == results["steps"] == 20  # one per training batch: validation and test see clean ids
    ckpt = torch.load(results["best_ckpt_path"], weights_only=True)
    assert MASK_CHAR in ckpt["hyper_parameters"]["tokenizer"]["chars"]


def test_label_smoothing_is_cross_entropy_with_smoothed_targets():
    logits, targets = torch.randn(3, 5, 11), torch.randint(11, (3, 5))
    targets[0, 0] = -100  # not scored
    flat = logits.flatten(0, 1), targets.flatten()
    loss = LabelSmoothing(0.2).loss(logits, targets, F.cross_entropy(*flat, ignore_index=-100))
    assert loss == pytest.approx(
        float(F.cross_entropy(*flat, ignore_index=-100, label_smoothing=0.2)), rel=1e-5
    )


def test_label_smoothing_keeps_what_an_earlier_regularizer_added_to_the_loss():
    logits, targets = torch.randn(3, 5, 11), torch.randint(11, (3, 5))
    flat = logits.flatten(0, 1), targets.flatten()
    plain, smoothed = F.cross_entropy(*flat), F.cross_entropy(*flat, label_smoothing=0.2)
    penalty = torch.tensor(0.75)  # what a regularizer before it in the config added
    loss = LabelSmoothing(0.2).loss(logits, targets, plain + penalty)
    assert float(loss) == pytest.approx(float(smoothed + penalty), rel=1e-6)


def test_stochastic_depth_drops_whole_branches_per_sequence():
    torch.manual_seed(1)
    net = model()
    build_regularizers(
        {"sd": {"_target_": "tinytransformer.training.regularizers.StochasticDepth", "drop_prob": 0.5}}, net
    )
    outputs = []
    net.blocks[3].mlp.register_forward_hook(lambda m, a, out: outputs.append(out))  # runs after the drop
    net.train()
    net(torch.randint(11, (4000, 3)))
    per_position = outputs[0].abs().sum(-1) == 0  # (B, T): positions whose MLP output is zero
    dropped = per_position.all(-1)
    assert torch.equal(per_position.any(-1), dropped)  # a sequence loses all its positions or none
    # Block 4 of 4 drops with drop_prob * 4/4 = 0.5.
    assert dropped.float().mean() == pytest.approx(0.5, abs=0.03)


def test_stochastic_depth_keeps_the_expected_branch_output():
    net = model()
    build_regularizers(
        {"sd": {"_target_": "tinytransformer.training.regularizers.StochasticDepth", "drop_prob": 0.4}}, net
    )
    seen = []
    mlp = net.blocks[1].mlp  # block 2 of 4: p = 0.4 * 2/4 = 0.2
    mlp.register_forward_hook(lambda m, a, out: seen.append(out))
    x = torch.randn(20000, 1, 16)
    net.train()
    torch.manual_seed(3)
    mlp(x)
    raw = mlp.forward(x)  # forward() runs no hooks: the branch's own output
    ratio = seen[0] / raw
    kept = ratio[ratio.abs() > 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.8), rtol=1e-4)  # scaled by 1/(1-p)
    assert (ratio == 0).all(-1).float().mean() == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize(
    "spec",
    [
        {"_target_": "tinytransformer.training.regularizers.StochasticDepth", "drop_prob": 0.5},
        {"_target_": "tinytransformer.training.regularizers.LabelSmoothing", "smoothing": 0.3},
    ],
)
def test_regularizers_are_off_in_evaluation_and_generation(spec):
    regularized, plain = model(), model()
    build_regularizers({"r": spec}, regularized)
    regularized.eval(), plain.eval()
    x = torch.randint(11, (8, 12))
    assert torch.equal(regularized(x), plain(x))
    assert regularized.state_dict().keys() == plain.state_dict().keys()  # checkpoints load into a plain model
    prompt = torch.tensor([[1, 2, 3]])
    for use_cache in (True, False):
        a = generate(
            regularized.train(), prompt, 20, generator=torch.Generator().manual_seed(0), use_cache=use_cache
        )
        b = generate(
            plain.train(), prompt, 20, generator=torch.Generator().manual_seed(0), use_cache=use_cache
        )
        assert torch.equal(a, b)


def logged_hparams(run_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.string_value or v.number_value for k, v in values.items()}


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("label_smoothing", "smoothing", 0.1),
        ("stochastic_depth", "drop_prob", 0.2),
        ("input_noise", "mask_prob", 0.1),
    ],
)
def test_a_run_with_it_trains_differently_and_logs_every_regularizers_value_as_an_hparam(
    name, key, value, tmp_path
):
    results = train(compose_train([*RUN, f"regularization={name}"], tmp_path), tmp_path)
    plain_dir = tmp_path / "plain"
    plain = train(compose_train(RUN, plain_dir), plain_dir)
    assert results["steps"] == plain["steps"] == 20
    assert (
        results["final_val_loss"] != plain["final_val_loss"]
    )  # it changed the weights (val loss is plain CE)
    regularized, baseline = logged_hparams(tmp_path), logged_hparams(plain_dir)
    assert regularized.keys() == baseline.keys()  # the same columns for every run of a sweep
    assert regularized[f"regularizers.{name}.{key}"] == pytest.approx(value)
    assert baseline[f"regularizers.{name}.{key}"] == 0


def test_an_unknown_regularizer_argument_is_one_line(tmp_path):
    from tinytransformer.errors import UserError

    with pytest.raises(UserError, match=r"^regularizers.sd.p: StochasticDepth takes no argument 'p'"):
        build_regularizers(
            {"sd": {"_target_": "tinytransformer.training.regularizers.StochasticDepth", "p": 0.1}}, model()
        )
    spec = {"_target_": "tinytransformer.training.regularizers.LabelSmoothing", "smoothing": 1.5}
    with pytest.raises(UserError, match=r"^regularizers.ls: smoothing must be in \[0, 1\), got 1.5"):
        build_regularizers({"ls": spec}, None)  # checked before a model exists (the CLI's pre-flight)
    with pytest.raises(UserError, match=r"^regularizers.sd: Linear has no `blocks`"):
        build_regularizers(
            {"sd": {"_target_": "tinytransformer.training.regularizers.StochasticDepth"}},
            torch.nn.Linear(2, 2),
        )
