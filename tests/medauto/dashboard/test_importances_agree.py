"""The report's parameter importances are the ones optuna-dashboard shows (one owner)."""

from __future__ import annotations

import io
import json
import math
import wsgiref.util
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import optuna_dashboard
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from medauto.importance import param_importances
from medauto.storage import open_storage


def _dashboard_importances(storage: Any, study: optuna.Study) -> dict[str, float]:
    """GET /api/studies/<id>/param_importances of the real dashboard app, in process."""
    app = optuna_dashboard.wsgi(storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    environ: dict[str, Any] = {"PATH_INFO": f"/api/studies/{study_id}/param_importances",
                               "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    (per_objective,) = json.loads(body)["param_importances"]
    return {row["name"]: row["importance"] for row in per_objective}


def _study(storage: Any, direction: str) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=direction, direction=direction)
    rng = np.random.default_rng(0)
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True),
             "opt": CategoricalDistribution(["adam", "sgd"]),
             "depth": IntDistribution(1, 8)}
    for _ in range(16):
        p = {"lr": float(10 ** rng.uniform(-4, -1)), "opt": str(rng.choice(["adam", "sgd"])),
             "depth": int(rng.integers(1, 9))}
        value = -abs(math.log10(p["lr"]) + 2.5) + 0.05 * p["depth"]  # lr matters most
        extra = {"momentum": FloatDistribution(0.0, 0.99)} if p["opt"] == "sgd" else {}
        if extra:  # a conditional parameter: only SGD trials have it
            p["momentum"] = float(rng.uniform(0.0, 0.99))
        study.add_trial(create_trial(value=value, params=p, distributions={**dists, **extra}))
    return study


def test_report_and_dashboard_show_the_same_importances(tmp_path: Path) -> None:
    # one storage, two studies: the dashboard caches importances per study id
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    for direction in ("maximize", "minimize"):
        study = _study(storage, direction)
        mine, note = param_importances(study)
        theirs = _dashboard_importances(storage, study)
        assert set(mine) == set(theirs) == {"lr", "opt", "depth", "momentum"} and not note
        for name in mine:
            assert mine[name] == theirs[name], (direction, name, mine, theirs)
        assert math.isclose(sum(mine.values()), 1.0, rel_tol=1e-6)
