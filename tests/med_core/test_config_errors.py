"""ConfigError carries its key, rule and value as fields, not only as message text."""

from __future__ import annotations

import pickle

import pytest

from med_core.config import TrainConfig
from med_core.device import resolve_device
from med_core.exceptions import ConfigError


def test_a_nested_field_error_names_the_dotted_key_rule_and_value() -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat({"optim.lr": -1.0})
    assert (e.value.key, e.value.rule, e.value.value) == ("optim.lr", "a number > 0", -1.0)
    assert str(e.value) == "optim.lr: must be a number > 0, got -1.0"


def test_fields_survive_yaml_sources_unknown_keys_and_pickling() -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_yaml_str("optim:\n  lr: 0\n", source="run.yaml")
    assert str(e.value).startswith("run.yaml: optim.lr: must be")
    assert e.value.key == "optim.lr" and e.value.value == 0
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat({"optim.nope": 1})
    assert (e.value.key, e.value.rule) == ("optim.nope", "a TrainConfig key")
    again = pickle.loads(pickle.dumps(e.value))  # DDP ranks and workers pickle errors
    assert (again.key, again.rule, str(again)) == (e.value.key, e.value.rule, str(e.value))


def test_device_error_is_structured_and_a_free_text_error_has_no_key() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_device("gpu0")
    assert e.value.key == "device" and e.value.value == "gpu0" and "cuda:K" in e.value.rule
    assert ConfigError("several keys are wrong").key is None
    with pytest.raises(TypeError):
        ConfigError(key="x")  # neither a message nor a rule


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("ddp.bucket_cap_mb", 0, "a number > 0"),
        ("ddp.bucket_cap_mb", "25", "a number > 0"),
        ("ddp.static_graph", "yes", "of type bool"),
    ],
)
def test_a_bad_ddp_option_names_its_key_rule_and_value(key: str, value: object, rule: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat({key: value})
    assert (e.value.key, e.value.rule) == (key, rule) and e.value.value == value
    assert str(e.value).startswith(f"{key}: must be {rule}, got ")
    assert TrainConfig.from_flat({"ddp.bucket_cap_mb": 4}).ddp.bucket_cap_mb == 4.0
