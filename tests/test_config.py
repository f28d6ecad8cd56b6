"""One source of truth for the config: the schema's defaults are the default run's, every range check sits
beside its field and refuses a bad value in one line, and Hydra refuses a wrong type in that same line."""

import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf
from tests.conftest import compose_train

from tinytransformer.data.config import DataConfig
from tinytransformer.errors import UserError
from tinytransformer.model import TransformerConfig
from tinytransformer.runtime.cli import CONFIG_DIR
from tinytransformer.runtime.preflight import OPTIONAL_CHECKS, validate
from tinytransformer.runtime.schema import RunConfig, TrainerConfig

# A value each check refuses, and what the line says the value must be.
REFUSED = {
    "seed": ("-1", "an integer >= 0"),
    "test": ("yes", "true or false"),
    "data.num_chars": ("0", "an integer >= 1"),
    "data.tokenizer": ("bpe", "'char' or 'simple'"),
    "data.block_size": ("0", "an integer >= 1"),
    "data.batch_size": ("-2", "an integer >= 1"),
    "data.eval_batch_size": ("0", "an integer >= 1"),
    "data.val_fraction": ("1.0", "a number in (0, 1)"),
    "data.test_fraction": ("-0.1", "a number in [0, 1)"),
    "data.max_eval_chars": ("0", "an integer >= 1"),
    "data.overfit_batches": ("-1", "an integer >= 0 (0 = off)"),
    "trainer.max_steps": ("0", "an integer >= 1"),
    "trainer.val_check_interval": ("0.5", "an integer >= 1 (steps)"),
    "trainer.log_every_n_steps": ("0", "an integer >= 1"),
    "trainer.precision": (
        "fp8",
        "one of auto, 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true, 32",
    ),
    "trainer.accumulate_grad_batches": ("0", "an integer >= 1 (1 = no accumulation)"),
    "trainer.max_time": ("90min", "a time budget DD:HH:MM:SS (e.g. 00:01:30:00 for 90 minutes) or null"),
    "trainer.checkpoint_every_n_steps": ("0", "an integer >= 1"),
    "trainer.threads_per_process": ("0", "an integer >= 1 or null"),
    "model.d_model": ("0", "an integer >= 1"),
    "model.n_heads": ("0", "an integer >= 1"),
    "model.n_layers": ("0", "an integer >= 1"),
    "model.dropout": ("1.5", "a number in [0, 1)"),
    "model.bias": ("1", "true or false"),
    "model.compile": ("maybe", "true or false"),
    "optimizer.lr": ("0", "a number > 0"),
    "optimizer.weight_decay": ("-0.1", "a number >= 0"),
    "trainer.gradient_clip_val": ("-1", "a number >= 0 (0 = measure, never clip) or null"),
    "callbacks.early_stopping.patience": ("0", "an integer >= 1"),
    "callbacks.early_stopping.min_delta": ("-0.1", "a number >= 0"),
    "callbacks.sample_generation.every_n_steps": ("-1", "an integer >= 0 (0 = off)"),
    "callbacks.sample_generation.stop_at_quality": ("0", "a number in (0, 1]"),
}


def checked_keys() -> set[str]:
    """Every key with a range check: the schemas' fields and OPTIONAL_CHECKS (the scheduler's aside: its
    checks are its class's to own)."""
    schemas = {"": RunConfig, "data.": DataConfig, "trainer.": TrainerConfig}
    keys = {p + f.name for p, s in schemas.items() for f in dataclasses.fields(s) if "check" in f.metadata}
    keys |= {f"model.{f.name}" for f in dataclasses.fields(TransformerConfig) if "check" in f.metadata}
    keys -= {"model.vocab_size", "model.block_size"}  # the data gives both, never the config
    keys |= {key for key, _, ok, _ in OPTIONAL_CHECKS if ok is not None and not key.startswith("scheduler.")}
    return keys


def test_every_range_check_has_a_case_here():
    assert checked_keys() <= set(REFUSED)


@pytest.mark.parametrize("key", list(REFUSED))
def test_each_check_refuses_a_bad_value_in_one_line_naming_key_value_and_range(key, tmp_path):
    value, allowed = REFUSED[key]
    with pytest.raises(UserError) as err:
        validate(compose_train([f"{key}={value}"], tmp_path))
    message = str(err.value)
    assert message.startswith(f"{key}=") and message.endswith(f" is not allowed: {key} must be {allowed}")
    assert value.strip("'") in message.split(" is not allowed")[0] and "\n" not in message


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "trainer.max_steps=abc",
            "trainer.max_steps='abc' is not allowed: trainer.max_steps must be an integer >= 1",
        ),
        (
            "data.batch_size=1.5",
            "data.batch_size=1.5 is not allowed: data.batch_size must be an integer >= 1",
        ),
        (
            "data.test_fraction=x",
            "data.test_fraction='x' is not allowed: data.test_fraction must be a number in [0, 1)",
        ),
    ],
)
def test_hydra_refuses_a_wrong_type_at_compose_time_in_validates_line(override, line, tmp_path):
    with pytest.raises(UserError) as err:
        compose_train([override], tmp_path)
    assert str(err.value) == line


def test_a_wrong_type_in_a_yaml_names_the_yaml(tmp_path):
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "mine.yaml").write_text("batch_size: many\n")
    with pytest.raises(UserError) as err:
        compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=mine"], tmp_path)
    assert str(err.value) == (
        "data.batch_size='many' is not allowed: data.batch_size must be an integer >= 1 (set in data/mine)"
    )


@pytest.mark.parametrize("override", ["+data.block_sise=8", "data.block_sise=8"])
def test_a_key_data_does_not_have_is_refused_with_the_nearest_one(override, tmp_path):
    with pytest.raises(UserError) as err:
        validate(compose_train([override], tmp_path))
    assert str(err.value).startswith("data.block_sise=8: no such config key (did you mean data.block_size?)")


def test_the_trainer_takes_any_lightning_trainer_argument_and_no_other(tmp_path):
    cfg = compose_train(["+trainer.profiler=simple", "trainer.gradient_clip_algorithm=value"], tmp_path)
    validate(cfg)
    assert (cfg.trainer.profiler, cfg.trainer.gradient_clip_algorithm) == ("simple", "value")
    with pytest.raises(UserError, match=r"^trainer\.max_step: Trainer takes no argument 'max_step'"):
        validate(compose_train(["trainer.max_step=10"], tmp_path))


def test_the_model_checks_are_tiny_transformers_only(tmp_path):
    validate(compose_train(["model._target_=my_models.Other", "model.dropout=1.5"], tmp_path))
    with pytest.raises(
        UserError, match=r"^model.n_heads=3 does not divide model.d_model=128; pick n_heads from"
    ):
        validate(compose_train(["model.n_heads=3"], tmp_path))


def test_val_and_test_fractions_must_leave_training_data(tmp_path):
    with pytest.raises(UserError) as err:
        validate(compose_train(["data.val_fraction=0.5", "data.test_fraction=0.5"], tmp_path))
    assert str(err.value) == (
        "data.val_fraction + data.test_fraction = 1.0 leaves no training data; their sum must be < 1"
    )


def test_the_default_runs_data_is_data_config_field_for_field(tmp_path):
    composed = OmegaConf.to_container(compose_train([], tmp_path).data)
    # The one key conf/data/tiny_world.yaml sets: a run caches under paths.cache_dir, not the working dir.
    assert composed == dataclasses.asdict(DataConfig()) | {"cache_dir": "${paths.cache_dir}"}


def test_the_default_runs_top_level_and_trainer_are_the_schemas(tmp_path):
    cfg = compose_train([], tmp_path)
    for schema, node in ((RunConfig, cfg), (TrainerConfig, cfg.trainer)):
        for field, default in dataclasses.asdict(schema()).items():
            assert node[field] == default, field


@pytest.mark.parametrize("group", ["data", "trainer"])
def test_no_data_or_trainer_yaml_repeats_a_schema_default(group):
    defaults = dataclasses.asdict({"data": DataConfig(), "trainer": TrainerConfig()}[group])
    for path in (CONFIG_DIR / group).glob("*.yaml"):
        values = yaml.safe_load(path.read_text()) or {}
        assert not [k for k, v in values.items() if k in defaults and v == defaults[k]], path.name


def test_train_yaml_sets_no_top_level_key_of_the_schema():
    values = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())
    assert not set(values) & {f.name for f in dataclasses.fields(RunConfig)}
