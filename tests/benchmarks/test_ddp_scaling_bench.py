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


@pytest.mark.ddp
def test_cpu_profile_of_both_ranks_with_ddp_options(tmp_path: Path) -> None:
    out, js, traces = tmp_path / "ddp.md", tmp_path / "ddp.json", tmp_path / "traces"
    out.write_text(ddp_scaling.HEADER + "\nA hand-written note.\n", encoding="utf-8")
    argv = [
        "--device", "cpu", "--backbone", "resnet18", "--img-size", "16", "--train-images", "24",
        "--val-images", "4", "--per-gpu-batch", "4", "--warmup-epochs", "1",
        "--checkpointing", "on", "--bucket-cap-mb", "2", "--static-graph",
        "--profile", str(traces), "--out", str(out), "--json", str(js),
    ]  # fmt: skip
    assert ddp_scaling.main(argv) == 0
    rows = json.loads(js.read_text(encoding="utf-8"))["rows"]
    assert [(r["rank"], r["checkpointing"], r["status"]) for r in rows] == [
        (0, True, "ok"), (1, True, "ok")]  # fmt: skip
    for r in rows:
        assert r["steps"] == 2  # 3 steps of 2 × 4 images, the first left out
        assert r["comm_ms"] > 0 and 0 <= r["overlap"] <= 1
        assert r["exposed_comm_ms"] >= 0 and r["idle_ms"] >= 0
        assert r["step_ms"] == pytest.approx(r["compute_ms"] + r["exposed_comm_ms"] + r["idle_ms"])
        # ddp.bucket_cap_mb reached DDP through TrainConfig and the Trainer: ResNet-18's
        # 45 MB of gradients in 2 MiB buckets take >= 6 all-reduces a step (torch's default
        # buckets take 3).
        assert r["collectives"] >= 6
        # per epoch: loss window and loss sum all-reduces, one buffer broadcast per dtype
        # (per buffer it would be 60), the validation gathers
        assert 1 <= r["tail_collectives"] <= 12 and r["tail_ms"] > 0
        assert (traces / "ckpt-on" / f"rank{r['rank']}.json").stat().st_size > 0
    md = out.read_text(encoding="utf-8")
    assert "A hand-written note." in md  # other text of the file is kept
    assert "<!-- ddp_scaling:profile-cpu-bucket2-static:begin -->" in md
    assert "## Profile: CPU (gloo), bucket 2 MiB, static graph" in md and "| on | 1 | 2 |" in md


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
