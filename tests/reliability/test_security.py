"""Security properties: secrets stay secret, untrusted files run no code, outputs stay put.

* Passwords in storage and tracking URLs never appear in a log line, CLI output, log file,
  MLflow param/tag or any file the search writes (a real search on the real PostgreSQL
  server, with the server's password in the URL, grepped everywhere).
* Checkpoints are loaded with ``weights_only=True``: a crafted pickle whose unpickling
  would create a marker file is refused through ``medauto train --resume``, and no
  ``torch.load`` in the code base can skip the flag.
* YAML is loaded safely: a ``!!python/object/apply`` tag is refused at every YAML entry
  point (search space, train config, ``--sampler-arg``/``--pruner-arg``, ``--set``).
* Everything a search writes stays inside its run directory — also with a study name made
  of ``..`` and slashes — including MLflow's artifact root.
* The dashboard binds to 127.0.0.1 unless ``--host`` is given (then it warns): covered by
  ``tests/medauto/dashboard/test_dashboard_server.py`` (see :data:`COVERED_ELSEWHERE`).
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from reliability_helpers import REPO
from reliability_helpers import child_env
from reliability_helpers import mlflow_runs
from reliability_helpers import seed_mlflow

from med_core.training._checkpoint import FORMAT_VERSION
from medauto.cli import main
from medauto.storage import open_storage

#: Properties proven by other test modules; the doc generator lists them, and
#: test_covered_elsewhere_still_exists keeps the references true.
COVERED_ELSEWHERE = [
    ("dashboard binds 127.0.0.1 by default",
     "tests/medauto/dashboard/test_dashboard_server.py::test_default_bind_is_loopback_only"),
    ("dashboard on --host warns and is reachable",
     "tests/medauto/dashboard/test_dashboard_server.py::test_public_host_warns_and_is_reachable"),
    ("artifact names cannot escape the artifact store",
     "tests/medauto/dashboard/test_artifacts.py::test_malicious_names_stay_inside_the_store"),
    ("artifact store refuses a symlink out of the run dir",
     "tests/medauto/dashboard/test_artifacts.py::"
     "test_artifact_store_refuses_a_link_out_of_the_run_dir"),
]

#: The YAML entry points that get a ``!!python/object/apply`` payload: id → (argv, exit
#: code); ``{f}`` is a YAML file holding the payload, ``{v}`` the payload as a value.
YAML_ENTRY_POINTS = {
    "search-space": (["search", "--space", "{f}", "--run-dir", "{run}", "--no-tracking"], 1),
    "train-config": (["train", "--config", "{f}", "--out", "{run}/out"], 1),
    "sampler-arg": (["search", "--space", "fast", "--sampler", "random", "--sampler-arg",
                     "seed={v}", "--run-dir", "{run}", "--no-tracking"], 1),
    "pruner-arg": (["search", "--space", "fast", "--pruner", "median", "--pruner-arg",
                    "n_startup_trials={v}", "--run-dir", "{run}", "--no-tracking"], 1),
    "train-set": (["med_core.train", "--config", "{good}", "--set", "epochs={v}", "--out",
                   "{run}/out"], 2),
}
#: Crafted checkpoints (id → how the payload is written).
PICKLE_PAYLOADS = ("torch-zip", "raw-pickle")


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.slow
def test_passwords_never_leak_and_outputs_stay_in_the_run_dir(
    postgres_server: object, tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    mlflow_template: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url = postgres_server.create_database()  # type: ignore[attr-defined]
    secret = postgres_server.password  # type: ignore[attr-defined]
    assert secret in url
    run = tmp_path / "run"
    seed_mlflow(run, mlflow_template)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    hostile = "../../escape/../x"  # a path as study name: refused in one line
    study = "x"
    argv = [
        "search", "--selection", "holdout", "--no-final-model",
        "--data", "breastmnist", "--data-dir", str(micro_data_dir),
        "--space", str(micro_space), "--trials", "1", "--study", study, "--storage", url,
        "--run-dir", str(run), "--device", "cpu", "--no-progress", "-v",
        "--log-file", str(run / "search.log"),
    ]
    outside_before = {p for p in tmp_path.rglob("*") if run not in p.parents and p != run}
    refused = subprocess.run(
        [sys.executable, "-m", "medauto.cli",
         *[hostile if a == study else a for a in argv]],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=child_env(),
    )
    assert refused.returncode == 1 and "not a valid name" in refused.stderr, refused.stderr
    assert secret not in refused.stdout + refused.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "medauto.cli", *argv], cwd=cwd, capture_output=True,
        text=True, timeout=300,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INFO" in (run / "search.log").read_text()  # -v really logged

    # CLI output and every log line.
    assert secret not in proc.stdout and secret not in proc.stderr
    # The same through status/best (stdout), and through the environment variable.
    for extra in (["status"], ["status", "--json"], ["best"]):
        assert main([*extra, "--study", study, "--storage", url]) == 0
        out = capsys.readouterr()
        assert secret not in out.out + out.err
    # Every file the search wrote (MLflow store, log file, artifacts, Optuna's run dir).
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    # MLflow params and tags, read back structurally too.
    runs = mlflow_runs(run, study)
    assert runs
    for r in runs:
        assert secret not in json.dumps([r.data.params, r.data.tags, r.info.run_name])
    # What the study itself stores (user/system attrs of the study and its trials).
    loaded = optuna.load_study(study_name=study, storage=open_storage(url))
    stored = [loaded.user_attrs, [[t.user_attrs, t.system_attrs] for t in loaded.get_trials()]]
    assert secret not in json.dumps(stored, default=str)

    # Nothing was written outside the run directory: not next to it, not in the working
    # directory, not where "../../escape" would point; MLflow's artifact root is inside too.
    outside_after = {p for p in tmp_path.rglob("*") if run not in p.parents and p != run}
    assert outside_after == outside_before, sorted(map(str, outside_after - outside_before))
    assert not list(cwd.iterdir())
    from mlflow import MlflowClient

    exp = MlflowClient(f"sqlite:///{run / 'mlflow.db'}").get_experiment_by_name(study)
    assert exp is not None
    roots = [exp.artifact_location, *(r.info.artifact_uri for r in runs)]
    for root in roots:
        local = Path(root.removeprefix("file://"))
        assert local.resolve().is_relative_to(run.resolve()), root


def test_tracking_uri_password_is_redacted_in_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable or failing MLflow store is logged with the password replaced."""
    import mlflow.store.db.utils

    from medauto.tracking import MlflowTracker

    # MLflow retries a database it cannot reach 10 times with backoff (~100 s) before the
    # tracker gets the error; one attempt is enough here.
    monkeypatch.setattr(mlflow.store.db.utils, "MAX_RETRY_COUNT", 1)

    secret = "TrackPw-71f3"
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("medauto")
    logger.addHandler(handler)
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    try:
        for uri in (
            f"http://alice:{secret}@127.0.0.1:9/",  # unreachable server
            f"postgresql+psycopg://alice:{secret}@127.0.0.1:9/mlflow",  # failing store
        ):
            tracker = MlflowTracker(uri, reach_timeout=0.5)
            tracker.start_study(study)
            assert not tracker.enabled  # it warned and switched itself off
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert len(lines) >= 2 and all("alice:***@" in line for line in lines), lines
    assert not [line for line in lines if secret in line]


# -- untrusted checkpoints ---------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", PICKLE_PAYLOADS)
def test_crafted_checkpoint_is_refused_and_runs_no_code(
    kind: str, tmp_path: Path, micro_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    out.mkdir()
    state = {"format_version": FORMAT_VERSION, "kind": "last", "model": _Payload(marker)}
    if kind == "torch-zip":
        torch.save(state, out / "last.pt")
    else:
        (out / "last.pt").write_bytes(pickle.dumps(state, protocol=2))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "breastmnist",
                                            "data_dir": str(micro_data_dir)}, "epochs": 1}))
    code = main(["train", "--config", str(cfg), "--device", "cpu", "--out", str(out),
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert str(out / "last.pt") in err and "weights_only" in err, err
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_no_loader_in_the_code_base_can_run_pickled_or_tagged_code() -> None:
    """Every ``torch.load`` passes ``weights_only=True``; YAML only through safe loaders
    (``yaml.safe_load``, or ``yaml.load`` with ``yaml.SafeLoader`` or a subclass of it
    defined in the same module); no ``pickle.load`` of files."""
    safe_bases = {"yaml.SafeLoader", "yaml.CSafeLoader"}
    unsafe_yaml = {"yaml.load_all", "yaml.unsafe_load", "yaml.full_load",
                   "yaml.unsafe_load_all", "yaml.full_load_all"}
    unsafe_names = {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"}
    problems = []
    files = [p for pkg in ("med_core", "medauto") for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        safe = set(safe_bases)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and {_dotted(b) for b in node.bases} & safe_bases:
                safe.add(node.name)
        for call in _calls(tree):
            name = _dotted(call.func)
            kwargs = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
            loader = _dotted(kwargs.get("Loader", ast.Constant(None)))
            if name == "yaml.load" and loader not in safe:
                problems.append(f"{path}:{call.lineno}: yaml.load without a SafeLoader")
            if name in unsafe_yaml or name in ("pickle.load", "pickle.Unpickler"):
                problems.append(f"{path}:{call.lineno}: {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _dotted(node) in unsafe_names:
                problems.append(f"{path}:{node.lineno}: {_dotted(node)}")
    assert not problems, "\n".join(problems)


# -- untrusted YAML ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(YAML_ENTRY_POINTS))
def test_yaml_python_tags_are_refused_everywhere(
    entry: str, tmp_path: Path, micro_data_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "pwned"
    value = f"!!python/object/apply:os.system ['touch {marker}']"
    payload = tmp_path / "payload.yaml"
    if entry == "search-space":
        payload.write_text(
            "name: evil\nfidelity: {min_epochs: 1, max_epochs: 1}\n"
            f"fixed: {{model.backbone: mobilenet_v3_small, batch_size: {value}}}\n"
        )
    else:
        payload.write_text(f"data: {{dataset: breastmnist}}\nepochs: {value}\n")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"data": {"dataset": "breastmnist"}, "epochs": 1}))
    monkeypatch.setenv("MEDAUTO_DATA_DIR", str(micro_data_dir))
    subs = {"{f}": str(payload), "{v}": value, "{run}": str(tmp_path / "run"),
            "{good}": str(good)}
    template, expected = YAML_ENTRY_POINTS[entry]
    argv = []
    for a in template:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    if argv[0] == "med_core.train":
        from med_core.train import main as train_main

        run, argv = train_main, argv[1:]
    else:
        run = main
    try:
        code = run([*argv, "--device", "cpu"])
    except SystemExit as e:  # argparse-level refusal
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert code == expected, err
    assert "python/object" in err and "unexpected error" not in err, err
    assert not marker.exists()


def test_covered_elsewhere_still_exists() -> None:
    for _, ref in COVERED_ELSEWHERE:
        path, name = ref.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), ref


@pytest.fixture(autouse=True)
def _no_env_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDAUTO_STORAGE", raising=False)
    monkeypatch.delenv("MEDAUTO_TRACKING_URI", raising=False)


def test_every_command_keeps_storage_and_tracking_passwords_secret(
    postgres_server: object, tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    mlflow_template: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """create-study, search, worker, status, best, retrain, report, export and predict, with the
    storage password in ``$MEDAUTO_STORAGE`` (and once in ``--storage``) and a tracking
    password in ``$MEDAUTO_TRACKING_URI``: no output, log record or written file holds
    either password."""
    url = postgres_server.create_database()  # type: ignore[attr-defined]
    secret = postgres_server.password  # type: ignore[attr-defined]
    tracking_secret = "tr4ck1ng-s3cret"
    run = tmp_path / "run"
    seed_mlflow(run, mlflow_template)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDAUTO_STORAGE", url)
    where = ["--study", "s", "--run-dir", str(run)]
    data = ["--data", "breastmnist", "--data-dir", str(micro_data_dir)]
    caplog.set_level(logging.DEBUG)
    commands = [
        ["create-study", *data, "--space", str(micro_space), "--trials", "1",
         "--selection", "holdout", "--device", "cpu", *where],
        ["search", *data, "--space", str(micro_space), "--trials", "1", "--selection",
         "holdout", "--device", "cpu", "--no-progress", "--storage", url, *where],
        ["worker", "--device", "cpu", "--no-progress", "--data-dir", str(micro_data_dir),
         *where],
        ["status", *where], ["best", *where],
        ["retrain", "--seeds", "0", "--device", "cpu", "--data-dir", str(micro_data_dir),
         *where],
        ["report", *where],
        ["export", "--no-parity-check", *where],
        ["predict", str(micro_data_dir / "breastmnist.npz"), *where],
    ]
    for argv in commands:
        tracking = "http://u:" + tracking_secret + "@127.0.0.1:9/"  # nothing listens there
        monkeypatch.setenv("MEDAUTO_TRACKING_URI", tracking)
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (argv[0], out.err[-2000:])
        for text in (out.out, out.err, caplog.text):
            assert secret not in text and tracking_secret not in text, argv[0]
    for path in [*run.rglob("*"), *tmp_path.glob("*")]:
        if path.is_file():
            payload = path.read_bytes()
            assert secret.encode() not in payload and tracking_secret.encode() not in payload, path
