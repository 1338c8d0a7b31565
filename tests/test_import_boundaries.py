"""Package boundaries: med_core never imports Optuna or MLflow; `import medauto` stays light."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str, modules: list[str]) -> list[str]:
    probe = f"import sys; {code}; print(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_med_core_does_not_import_optuna_or_mlflow() -> None:
    code = "import med_core.training, med_core.data, med_core.models, med_core.backbones"
    assert _loaded_after(code, ["optuna", "mlflow"]) == []


def test_import_medauto_and_its_cli_is_light() -> None:
    heavy = ["torch", "optuna", "mlflow", "optuna_dashboard", "onnx"]
    assert _loaded_after("import medauto", heavy) == []
    # The CLI needs Optuna's storages up front, never torch or the tracking/dashboard stack.
    assert _loaded_after("import medauto.cli", heavy) == ["optuna"]
