"""RetrainOptions: one validated option set for the CLI, the optimizer and retrain()."""

from __future__ import annotations

import pytest

from medauto.exceptions import MedautoError
from medauto.retrain import RetrainOptions
from medauto.retrain.options import TTA_MODES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ensemble": 0}, "ensemble must be an integer >= 1, got 0"),
        ({"seeds": (1, 1)}, "seeds must be distinct, got [1, 1]"),
        ({"seeds": ()}, "seeds must be a non-empty list"),
        ({"tta": True}, "tta must be one of ('trial', 'on', 'off', 'auto'), got True"),
        ({"weights": "best", "train_on_val": True}, "weights='best' selects the epoch"),
        ({"tta": "auto", "train_on_val": True, "weights": "last"}, "train_on_val trains on"),
        ({"quantize": "qat"}, "quantize must be one of ('static', 'dynamic') or None"),
        ({"calibration_batches": 0}, "calibration_batches must be an integer >= 1, got 0"),
    ],
)
def test_each_rule_names_the_option_and_the_value(changes: dict, message: str) -> None:
    with pytest.raises(MedautoError) as e:
        RetrainOptions(**changes)
    assert message in str(e.value)


def test_tta_is_one_string_mode_end_to_end_and_weights_resolve() -> None:
    # the CLI's choices are the option's modes: no str -> value -> str mapping
    assert [RetrainOptions(tta=m).tta for m in TTA_MODES] == list(TTA_MODES)
    assert RetrainOptions().kept_weights == "best"
    assert RetrainOptions(train_on_val=True).kept_weights == "last"
    assert RetrainOptions(seeds=[2, 0]).seeds == (2, 0)  # hashable, frozen


def test_updated_validates_and_refuses_unknown_names() -> None:
    base = RetrainOptions()
    assert base.updated(ensemble=3).ensemble == 3 and base.ensemble == 1
    with pytest.raises(MedautoError, match=r"unknown retrain option\(s\) \['ensembles'\]"):
        base.updated(ensembles=3)
    with pytest.raises(MedautoError, match="ensemble must be"):
        base.updated(ensemble=-1)
