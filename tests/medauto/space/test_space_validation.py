"""Every load-time rule of the search-space format raises one message shape.

``<file>: <key path>: must be <rule>, got <value>``: each case writes a bad YAML file and
asserts the message names the file, the key path and the rule or value.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from medauto.exceptions import SearchSpaceError
from medauto.space import SearchSpace

# (case id, YAML text, fragments the message must contain after "<id>.yaml: ")
BAD_SPACES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "malformed_yaml",
        """
        params:
          optim.lr: {type: float, low: 0.1
          batch_size: [32, 64]
        """,
        ("line 3", "must be valid YAML"),
    ),
    (
        "duplicate_key",
        """
        params:
          optim.lr: {type: float, low: 0.001, high: 0.1}
          optim.lr: {type: float, low: 0.01, high: 0.1}
        """,
        ("line 3, column 3", "duplicate key 'optim.lr' (first on line 2)"),
    ),
    (
        "empty_file",
        """
        # nothing but a comment
        """,
        ("top level: must be a mapping with keys", "got an empty document"),
    ),
    (
        "top_level_list",
        """
        - optim.lr
        - batch_size
        """,
        ("top level: must be a mapping with keys", "got ['optim.lr', 'batch_size']"),
    ),
    (
        "unknown_top_key",
        """
        parms:
          batch_size: [32, 64]
        """,
        ("parms: must be one of the top-level keys", "did you mean 'params'?"),
    ),
    (
        "unknown_param_key",
        """
        params:
          optim.lr: {type: float, low: 0.001, hgih: 0.1}
        """,
        ("params.optim.lr.hgih: must be one of the keys", "did you mean 'high'?"),
    ),
    (
        "key_of_other_type",
        """
        params:
          optim.lr: {type: float, low: 0.001, high: 0.1, choices: [0.1]}
        """,
        ("params.optim.lr.choices: must be one of the keys", "of a float param"),
    ),
    (
        "not_a_field",
        """
        params:
          optim.weight_decy: {type: float, low: 0.0, high: 0.1}
        """,
        (
            "params.optim.weight_decy: must be a TrainConfig field name",
            "did you mean 'optim.weight_decay'?",
        ),
    ),
    (
        "fixed_not_a_field",
        """
        fixed:
          model:
            backbon: resnet18
        """,
        ("fixed.model.backbon: must be a TrainConfig field name", "did you mean 'model.backbone'?"),
    ),
    (
        "low_ge_high",
        """
        params:
          optim.lr: {type: float, low: 0.1, high: 0.01}
        """,
        ("params.optim.lr.high: must be > low (0.1;", "got 0.01"),
    ),
    (
        "log_nonpositive_low",
        """
        params:
          optim.lr: {type: float, low: -0.001, high: 0.1, log: true}
        """,
        ("params.optim.lr.low: must be a float > 0 (log: true), got -0.001",),
    ),
    (
        "log_with_step",
        """
        params:
          optim.lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.001}
        """,
        ("params.optim.lr.step: must be omitted when log is true, got 0.001",),
    ),
    (
        "step_not_dividing",
        """
        params:
          label_smoothing: {type: float, low: 0.0, high: 0.2, step: 0.03}
        """,
        ("params.label_smoothing.step: must be a divisor of high - low (0.2), got 0.03",),
    ),
    (
        "int_step_not_dividing",
        """
        params:
          batch_size: {type: int, low: 16, high: 100, step: 16}
        """,
        ("params.batch_size.step: must be a divisor of high - low (84), got 16",),
    ),
    (
        "empty_choices",
        """
        params:
          batch_size: {type: categorical, choices: []}
        """,
        ("params.batch_size.choices: must be a non-empty list, got []",),
    ),
    (
        "duplicate_choices",
        """
        params:
          model.checkpoint_segments: {type: categorical, choices: ["off", 2, null]}
        """,
        ("params.model.checkpoint_segments.choices[2]: must be distinct", "got None"),
    ),
    (
        "bound_wrong_type",
        """
        params:
          optim.lr: {type: float, low: small, high: 0.1}
        """,
        ("params.optim.lr.low: must be a number, got 'small'",),
    ),
    (
        "int_bound_float",
        """
        params:
          batch_size: {type: int, low: 16.5, high: 256}
        """,
        ("params.batch_size.low: must be an integer, got 16.5",),
    ),
    (
        "float_type_for_int_field",
        """
        params:
          epochs: {type: float, low: 1, high: 10}
        """,
        (
            "params.epochs.type: must be one of ['categorical', 'int', 'fixed'] for the int "
            "field 'epochs', got 'float'",
        ),
    ),
    (
        "unknown_type",
        """
        params:
          optim.lr: {type: loguniform, low: 0.001, high: 0.1}
        """,
        (
            "params.optim.lr.type: must be one of ['categorical', 'int', 'float', 'fixed']",
            "got 'loguniform'",
        ),
    ),
    (
        "choice_wrong_type",
        """
        params:
          channels_last: [true, "yes please"]
        """,
        ("params.channels_last.choices[1]: must be true or false, got 'yes please'",),
    ),
    (
        "value_breaks_train_config_rule",
        """
        params:
          augment.rotation: {type: float, low: 0, high: 200}
        """,
        ("params.augment.rotation.high: must be a number in [0.0, 180.0], got 200.0",),
    ),
    (
        "choice_not_an_option",
        """
        params:
          optim.optimizer: [adamw, lamb]
        """,
        (
            "params.optim.optimizer.choices[1]: must be one of ['adamw', 'adam', 'sgd', "
            "'rmsprop'], got 'lamb'",
        ),
    ),
    (
        "fixed_breaks_rule",
        """
        fixed:
          optim.scheduler: warmup
        """,
        ("fixed.optim.scheduler: must be one of ['cosine'", "got 'warmup'"),
    ),
    (
        "unknown_backbone",
        """
        params:
          model.backbone: [resnet18, resnet19]
        """,
        (
            "params.model.backbone.choices[1]: must be a registered backbone name",
            "got 'resnet19'; did you mean",
            "'resnet18'",
        ),
    ),
    (
        "backbone_wrong_dims",
        """
        spatial_dims: 3
        params:
          model.backbone: [resnet18]
        """,
        ("params.model.backbone.choices[0]: must be a 3D backbone", "got 'resnet18'"),
    ),
    (
        "checkpoint_segments_out_of_range",
        """
        fixed:
          model.backbone: resnet18
        params:
          model.checkpoint_segments: ["off", default, 99]
        """,
        (
            "params.model.checkpoint_segments.choices[2]: must be 'off', 'default' or an "
            "integer in [1, ",
            "backbone 'resnet18'",
            "got 99",
        ),
    ),
    (
        "when_unknown_param",
        """
        params:
          augment.policy: [none, medium]
          augment.rotation: {type: float, low: 0, high: 30, when: {augment.polcy: medium}}
        """,
        (
            "params.augment.rotation.when: must be the name of another param",
            "got 'augment.polcy'; did you mean 'augment.policy'?",
        ),
    ),
    (
        "when_impossible_value",
        """
        params:
          augment.policy: [none, medium]
          augment.rotation: {type: float, low: 0, high: 30, when: {augment.policy: heavy}}
        """,
        (
            "params.augment.rotation.when.augment.policy: must be a value 'augment.policy' "
            "can take (categorical ['none', 'medium'])",
            "got 'heavy'",
        ),
    ),
    (
        "when_on_continuous",
        """
        params:
          optim.lr: {type: float, low: 0.001, high: 0.1}
          optim.weight_decay: {type: float, low: 0, high: 0.1, when: {optim.lr: 0.01}}
        """,
        ("params.optim.weight_decay.when.optim.lr: must be a condition on a categorical",),
    ),
    (
        "when_cycle",
        """
        params:
          optim.optimizer: {choices: [sgd, adamw], when: {optim.scheduler: step}}
          optim.scheduler: {choices: [step, cosine], when: {optim.optimizer: sgd}}
        """,
        ("params.optim.optimizer.when: must be free of cycles",),
    ),
    (
        "variants_not_exclusive",
        """
        params:
          optim.optimizer: [sgd, adamw, adam]
          optim.lr@sgd: {type: float, low: 0.01, high: 0.3, log: true,
                         when: {optim.optimizer: [sgd, adamw]}}
          optim.lr@adam: {type: float, low: 0.0001, high: 0.01, log: true,
                          when: {optim.optimizer: [adamw, adam]}}
        """,
        ("params.optim.lr@adam.when: must be a condition exclusive with that of 'optim.lr@sgd'",),
    ),
    (
        "param_shadowed_by_fixed",
        """
        fixed:
          optim.lr: 0.01
        params:
          optim.lr: {type: float, low: 0.001, high: 0.1}
        """,
        ("params.optim.lr: must be conditional (with when:) because fixed.optim.lr",),
    ),
    (
        "otherwise_without_when",
        """
        params:
          augment.rotation: {type: float, low: 0, high: 30, otherwise: 0}
        """,
        ("params.augment.rotation.otherwise: must be used together with when:, got 0",),
    ),
    (
        "fidelity_and_epochs_param",
        """
        fidelity: {min_epochs: 2, max_epochs: 20}
        params:
          epochs: {type: int, low: 5, high: 20}
        """,
        ("params.epochs: must be absent when fidelity: is given",),
    ),
    (
        "fidelity_max_below_min",
        """
        fidelity: {min_epochs: 8, max_epochs: 4}
        """,
        ("fidelity.max_epochs: must be >= fidelity.min_epochs (8), got 4",),
    ),
    (
        "spatial_dims_bad",
        """
        spatial_dims: 4
        """,
        ("spatial_dims: must be 2 or 3, got 4",),
    ),
]


@pytest.mark.parametrize(("case", "text", "fragments"), BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_bad_space_file_names_file_key_and_rule(
    tmp_path: Path, case: str, text: str, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    before = path.read_bytes()
    with pytest.raises(SearchSpaceError) as excinfo:
        SearchSpace.from_yaml(path)
    msg = str(excinfo.value)
    assert msg.startswith(f"{case}.yaml: "), msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert isinstance(excinfo.value, ValueError)  # callers catching ValueError keep working
    assert path.read_bytes() == before


def test_table_covers_enough_rules() -> None:
    assert len(BAD_SPACES) >= 12
    assert len({c[0] for c in BAD_SPACES}) == len(BAD_SPACES)


def test_unknown_space_name_lists_shipped_names() -> None:
    with pytest.raises(
        SearchSpaceError, match=r"shipped space name \[.*'fast'.*did you mean 'fast'"
    ):
        SearchSpace.from_yaml("fsat")


def test_from_dict_names_its_source() -> None:
    spec = {"params": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}}
    with pytest.raises(SearchSpaceError, match=r"^study 'x': params\.optim\.lr\.high: must be"):
        SearchSpace.from_dict(spec, source="study 'x'")


@pytest.mark.parametrize(
    "spec",
    [
        # boundaries that are valid
        {"params": {"optim.lr": {"type": "float", "low": 1e-6, "high": 1.0, "log": True}}},
        {"params": {"batch_size": {"type": "int", "low": 1, "high": 512, "log": True}}},
        {"params": {"label_smoothing": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1}}},
        {"params": {"augment.rotation": {"type": "float", "low": 0, "high": 180}}},
        # YAML 1.1 reads 1e-4 as a string; numeric strings are accepted for float fields
        {"params": {"optim.lr": {"type": "float", "low": "1e-4", "high": "1e-1", "log": True}}},
        {"params": {"optim.lr": {"type": "categorical", "choices": ["1e-4", 0.001]}}},
        # an empty space is a single fixed configuration
        {},
    ],
)
def test_boundary_specs_are_accepted(spec: dict) -> None:
    SearchSpace.from_dict(spec)
