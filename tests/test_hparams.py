"""The hparams every run logs are derived from the config: a new regularization YAML adds its keys."""

from tinytransformer.runtime.cli import CONFIG_DIR
from tinytransformer.runtime.hparams import flat_hparams
from tinytransformer.runtime.overrides import compose_config

REGULARIZATION = CONFIG_DIR / "regularization"


def compose(*overrides: str):
    return compose_config(CONFIG_DIR, "train", list(overrides), with_hydra=False)


def test_every_value_a_regularization_yaml_sets_is_an_hparam_named_by_its_override_key():
    params = flat_hparams(compose("regularization=all"), [REGULARIZATION])
    assert params["model.dropout"] == 0.2 and params["optimizer.weight_decay"] == 1.0
    assert params["trainer.gradient_clip_val"] == 0.5
    assert (
        params["regularizers.input_noise.mask_prob"] == 0.1
        and params["callbacks.early_stopping.patience"] == 3
    )
    assert params["regularizers.label_smoothing.smoothing"] == 0.1


def test_a_run_without_a_regularizer_logs_the_same_keys_with_it_off():
    default = flat_hparams(compose(), [REGULARIZATION])
    regularized = flat_hparams(compose("regularization=all"), [REGULARIZATION])
    assert default.keys() == regularized.keys()
    assert default["regularizers.stochastic_depth.drop_prob"] == 0
    dropped = flat_hparams(compose("~callbacks.early_stopping"), [REGULARIZATION])
    assert dropped["callbacks.early_stopping.patience"] == 0 and dropped.keys() == default.keys()


def test_a_new_regularization_yaml_adds_its_keys_with_no_list_to_edit(tmp_path):
    (tmp_path / "eps.yaml").write_text("optimizer:\n  eps: 1.0e-06\ndefaults:\n  - dropout\n")
    params = flat_hparams(compose("+optimizer.eps=1e-5"), [REGULARIZATION, tmp_path])
    assert params["optimizer.eps"] == 1e-5
    assert flat_hparams(compose(), [REGULARIZATION, tmp_path])["optimizer.eps"] == 0  # absent: off
    assert "defaults" not in params
