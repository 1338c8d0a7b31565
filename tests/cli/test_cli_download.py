"""``--download`` fetches a missing MedMNIST file through the medmnist package's table; on a
machine without network it fails with one clear line, before anything is created. The
network is made unreachable in-process (every socket connect and name lookup fails, as
offline), so these tests never download."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cli_helpers import Run

pytest.importorskip("medmnist")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)


@pytest.mark.parametrize("command", ["search", "create-study", "explain"])
def test_download_offline_is_one_clear_line_and_creates_nothing(
    command: str, run: Run, tmp_path: Path, offline: None
) -> None:
    where = (["--model", "m.pt"] if command == "explain" else
             ["--space", "fast", "--device", "cpu", "--run-dir", "runs"])
    code, out, err = run(command, "--data", "breastmnist", "--download", "--data-dir",
                         str(tmp_path / "data"), *where)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cannot download 'breastmnist'" in lines[0] and "no network connection" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data" / "breastmnist.npz").exists()


def test_train_download_offline_is_one_clear_line(
    run: Run, tmp_path: Path, offline: None
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {dataset: pneumoniamnist}\nepochs: 1\n")
    code, _, err = run("train", "--config", str(cfg), "--device", "cpu", "--out", "out",
                       "--data-dir", str(tmp_path / "data"), "--download")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot download 'pneumoniamnist'" in err and "no network connection" in err


def test_download_keeps_a_file_already_there_without_the_network(
    run: Run, micro_space: Path, micro_data_dir: Path, tmp_path: Path, offline: None
) -> None:
    before = (micro_data_dir / "breastmnist.npz").stat().st_mtime_ns
    code, out, err = run("create-study", "--data", "breastmnist", "--download", "--data-dir",
                         str(micro_data_dir), "--space", str(micro_space), "--device", "cpu",
                         "--run-dir", "runs")
    assert code == 0, err
    assert "study: breastmnist-micro" in out
    assert (micro_data_dir / "breastmnist.npz").stat().st_mtime_ns == before


def test_download_of_a_path_is_refused_in_one_line(run: Run, tmp_path: Path) -> None:
    code, _, err = run("create-study", "--data", str(tmp_path / "mine.npz"), "--download",
                       "--space", "fast", "--device", "cpu", "--run-dir", "runs")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "not a MedMNIST subset name" in err


def test_a_missing_file_names_download_as_the_way_to_get_it(run: Run, tmp_path: Path) -> None:
    code, _, err = run("create-study", "--data", "breastmnist", "--data-dir",
                       str(tmp_path / "data"), "--space", "fast", "--device", "cpu",
                       "--run-dir", "runs")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "pass --download" in err and str(tmp_path / "data") in err
