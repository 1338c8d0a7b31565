"""CPU smoke test of benchmarks/ddp_scaling.py (gloo, 2 processes, tiny sizes) and of the
trainer's DDP wrapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from benchmarks import ddp_scaling
from med_core.training._distributed import find_free_port
from med_core.training._distributed import wrap_ddp


def test_cpu_run_through_trainer_and_launch(tmp_path: Path) -> None:
    out, js = tmp_path / "ddp.md", tmp_path / "ddp.json"
    argv = [
        "--device", "cpu", "--backbone", "resnet18", "--img-size", "32", "--train-images", "16",
        "--val-images", "4", "--per-gpu-batch", "4", "--epochs", "2", "--warmup-epochs", "1",
        "--checkpointing", "on", "--out", str(out), "--json", str(js),
    ]  # fmt: skip
    assert ddp_scaling.main(argv) == 0
    rows = json.loads(js.read_text(encoding="utf-8"))["rows"]
    # checkpointing on only (the longer path; "off" differs by one config field): 2 launches
    assert [(r["gpus"], r["checkpointing"]) for r in rows] == [(1, True), (2, True)]
    for r in rows:
        assert r["status"] == "ok" and r["stop_reason"] == "completed"
        assert r["images_per_s"] > 0 and r["epoch_train_s"] > 0
        # weak scaling: 16 images in global batches of 4 (1 process) or 8 (2 processes)
        assert r["epoch_images"] == 16
        assert r["ratio"] == pytest.approx(r["images_per_s"] / rows[0]["images_per_s"])
    md = out.read_text(encoding="utf-8")
    assert "| on | 2 |" in md and "2-GPU/1-GPU" in md


def test_wrap_ddp_skips_per_step_buffer_broadcast_and_gradient_copies() -> None:
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0, world_size=1
    )
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        net = wrap_ddp(model, torch.device("cpu"))
        assert not net.broadcast_buffers  # no buffer broadcast before each forward
        assert net.gradient_as_bucket_view is True
        net(torch.randn(5, 3)).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        tdist.destroy_process_group()
