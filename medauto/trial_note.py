"""The readable note of a finished trial in optuna-dashboard (``optuna_dashboard.save_note``).

The dashboard shows user attributes as one JSON line each; the note says the same in
Markdown: state, value of the study's metric, backbone, epochs trained and the best epoch
(1-based, as the pruner's steps, the MLflow steps and the ``history`` attribute count
them), why it was pruned or failed, the per-epoch table and the configuration as YAML.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from medauto.keys import BACKBONE_ATTR
from medauto.keys import BEST_EPOCH_ATTR
from medauto.keys import CONFIG_ATTR
from medauto.keys import DEVICE_ATTR
from medauto.keys import DURATION_ATTR
from medauto.keys import EPOCHS_RUN_ATTR
from medauto.keys import HISTORY_ATTR
from medauto.keys import PRUNED_AT_EPOCH_ATTR
from medauto.keys import REASON_ATTR
from medauto.logging import get_logger

__all__ = ["save_trial_note", "trial_note"]

_logger = get_logger(__name__)

#: The per-epoch columns of the note (those a trial's history holds).
_EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "val_acc", "val_balanced_acc",
                  "lr", "epoch_time_s")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "-" if v is None else str(v)


def trial_note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """The Markdown note of the finished ``trial`` of ``study``."""
    import yaml

    attrs = trial.user_attrs
    names = study.metric_names
    metric = names[0] if names else "value"
    head = f"## Trial {trial.number} · {trial.state.name}"
    if trial.value is not None:
        head += f" · {metric} {trial.value:.4f}"
    lines = [head, ""]
    facts = [("backbone", attrs.get(BACKBONE_ATTR)),
             ("epochs trained", attrs.get(EPOCHS_RUN_ATTR)),
             ("best epoch", attrs.get(BEST_EPOCH_ATTR)),
             ("pruned after epoch", attrs.get(PRUNED_AT_EPOCH_ATTR)),
             ("reason", attrs.get(REASON_ATTR)),
             ("time", f"{attrs[DURATION_ATTR]:.1f} s" if DURATION_ATTR in attrs else None),
             ("device", attrs.get(DEVICE_ATTR))]
    lines += [f"- **{k}**: {v}" for k, v in facts if v not in (None, "")]
    history = attrs.get(HISTORY_ATTR) or []
    if history:
        cols = [c for c in _EPOCH_COLUMNS if any(c in row for row in history)]
        lines += ["", "### Epochs", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in cols) + " |" for row in history]
    if isinstance(attrs.get(CONFIG_ATTR), dict):
        text = yaml.safe_dump(attrs[CONFIG_ATTR], sort_keys=False, default_flow_style=False)
        lines += ["", "### Configuration", "", "```yaml", text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def save_trial_note(
    study: optuna.Study, trial: optuna.Trial, frozen: optuna.trial.FrozenTrial
) -> None:
    """Writes :func:`trial_note` of ``frozen`` (the finished ``trial``, as told) as the
    dashboard note of the live ``trial``.

    Never raises an ``Exception``: a note is a view, so a failure logs a warning.
    """
    try:
        from optuna_dashboard import save_note

        save_note(trial, trial_note(study, frozen))
    except Exception as e:  # noqa: BLE001 - a note never fails a trial
        _logger.warning("trial %d: no dashboard note (%s: %s)", trial.number,
                        type(e).__name__, e)
