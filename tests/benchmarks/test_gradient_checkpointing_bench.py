"""CPU smoke test of benchmarks/gradient_checkpointing.py (tiny sizes; the GPU run is manual)."""

from __future__ import annotations

import copy
import gc
import json
import re
import weakref
from pathlib import Path
from types import ModuleType
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gradient_checkpointing.py"


#: One intra-op thread: on a shared 2-core CI box the tiny models run several times faster.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


TINY = [
    "--device", "cpu", "--sizes", "16", "--batch-sizes", "2",
    "--families", "resnet,mobilenet",
    "--backbone", "resnet=resnet18", "--backbone", "mobilenet=mobilenet_v3_small",
    "--segments", "off,2", "--keep-last-segments", "2", "--warmup", "0", "--repeats", "1",
    "--time-limit", "300", "--watchdog-grace", "0",
]  # fmt: skip


def _table_rows(md: str, heading: str) -> list[list[str]]:
    """Body rows of the first Markdown table after ``heading``."""
    lines = md[md.index(heading) :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_cpu_smoke_run_writes_report_and_json(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, js, png = tmp_path / "gc.md", tmp_path / "gc.json", tmp_path / "gc.png"
    argv = [*TINY, "--out", str(out), "--json", str(js), "--plot", str(png)]
    assert bench.main(argv) == 0

    md = out.read_text(encoding="utf-8")
    # header: the exact command and the environment
    assert "python benchmarks/gradient_checkpointing.py --device cpu --sizes 16" in md
    assert f"--out {out}" in md
    assert "| torch |" in md and "| timm |" in md and "| CPU |" in md
    assert "peak device memory and resident activation memory are not available" in md

    # one row per (family, segments) in each family's table; saved % is 0 for off, > 0 on
    for family, name in (("resnet", "resnet18"), ("mobilenet", "mobilenet_v3_small")):
        rows = _table_rows(md, f"### {family} ({name})")
        # the label says which setting is the library default; compare without that tag
        by_seg = {r[2].replace(" (lib default)", ""): r for r in rows}
        assert set(by_seg) == {"off", "2", "2 keep last", "off (repeat)"}, rows  # repeat: noise
        assert all(r[-1] == "ok" for r in rows), rows
        assert float(by_seg["off"][6]) == 0.0  # mem saved %
        assert float(by_seg["2"][6]) > 0.0
        assert by_seg["off"][3] == "–"  # no peak device memory on CPU
        assert float(by_seg["2"][8]) > 0.0  # step ms
        # keeping the last group un-checkpointed keeps its activations: less saved
        assert 0.0 < float(by_seg["2 keep last"][6]) < float(by_seg["2"][6])

    # summary table has both families; the plot exists
    summary = _table_rows(md, "## Proposed default segments")
    assert [r[0] for r in summary] == ["resnet", "mobilenet"]
    assert png.is_file() and png.stat().st_size > 0
    assert "![memory saved vs. time overhead](gc.png)" in md

    # raw JSON parses and carries the same numbers
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["schema"] == 1 and data["status"] == "complete"
    assert data["command"].endswith(f"--plot {png}")
    assert all(r["status"] == "ok" for r in data["results"])
    repeats = [r for r in data["results"] if r["phase"] == "repeat"]
    assert sorted(r["family"] for r in repeats) == ["mobilenet", "resnet"]
    assert all(r["segments"] == 0 and r["mem_saved_pct"] == 0 for r in repeats)
    rows = [r for r in data["results"] if r["phase"] != "repeat"]
    assert len(rows) == 6 and {(r["family"], r["segments"], r["keep_last"]) for r in rows} == {
        (f, k, kl) for f in ("resnet", "mobilenet") for k, kl in ((0, False), (2, False), (2, True))
    }
    assert {r["variant"] for r in rows} == {"library", "keep_last"}
    for r in rows:
        assert r["saved_mib"] > 0 and r["step_ms"] > 0 and r["peak_mib"] is None
        if r["segments"]:
            assert r["mem_saved_pct"] > 0 and r["saved_mib"] < next(
                o["saved_mib"] for o in rows if o["family"] == r["family"] and o["segments"] == 0
            )
        else:
            assert r["mem_saved_pct"] == 0 and r["overhead_pct"] == 0
    assert data["max_batch"] == []  # CUDA only
    assert {s["family"] for s in data["summary"]} == {"resnet", "mobilenet"}
    assert all(s["noise_pct"] is not None for s in data["summary"])

    # the JSON turns into a FAMILY_DEFAULTS patch (CPU saved-bytes rule: it may or may not
    # meet the rule; each family is either an entry or a commented reason)
    capsys.readouterr()
    assert bench.main(["--propose-defaults", str(js)]) == 0
    patch = capsys.readouterr().out
    assert "FAMILY_DEFAULTS: dict[str, tuple[int, bool]] = {" in patch
    for fam in ("resnet", "mobilenet"):
        entry = rf'^    ("{fam}": \(\d+, (True|False)\),|# {fam}: none meets)'
        assert re.search(entry, patch, re.M)
    namespace: dict[str, object] = {}
    exec(patch, namespace)  # the patch is valid Python
    assert set(namespace["FAMILY_DEFAULTS"]) <= {"resnet", "mobilenet"}  # type: ignore[arg-type]


def test_profile_mode_on_cpu(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, js = tmp_path / "prof.md", tmp_path / "prof.json"
    argv = [
        "--device", "cpu", "--sizes", "16", "--batch-sizes", "2", "--families", "mobilenet",
        "--backbone", "mobilenet=mobilenet_v3_small", "--profile", "mobilenet",
        "--profile-segments", "2", "--profile-steps", "1", "--warmup", "0", "--repeats", "1",
        "--watchdog-grace", "0", "--out", str(out), "--json", str(js),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "=== profile mobilenet (mobilenet_v3_small)" in printed
    assert "aten::" in printed
    data = json.loads(js.read_text(encoding="utf-8"))
    (entry,) = data["profile"]
    assert [s["label"] for s in entry["settings"]] == ["off", "seg 2"]
    for s in entry["settings"]:
        assert s["prof"]["aten_calls_per_step"] > 0
        assert s["prof"]["launches_per_step"] is None  # no CUDA on CPU
    # recomputation shows up as more aten calls per step
    assert (
        entry["settings"][1]["prof"]["aten_calls_per_step"]
        > entry["settings"][0]["prof"]["aten_calls_per_step"]
    )
    assert "Ops that grew most" in out.read_text(encoding="utf-8")


@pytest.fixture
def parts(bench: ModuleType) -> SimpleNamespace:
    """The pieces of the benchmark that unit tests call (the script put the repository
    root on ``sys.path``): options and runner, max-batch search and probe worker from
    ``_gc_measure``, the rule from ``_gc_analysis``."""
    from benchmarks import _gc_analysis
    from benchmarks import _gc_measure

    return SimpleNamespace(
        CkptOptions=_gc_measure.CkptOptions,
        build_bench=_gc_measure.build_bench,
        saved_tensor_bytes=_gc_measure.saved_tensor_bytes,
        ScriptCheckpointed=_gc_measure.ScriptCheckpointed,
        search_max_batch=_gc_measure.search_max_batch,
        ProbeWorker=_gc_measure.ProbeWorker,
        choose=_gc_analysis.choose,
    )


@pytest.mark.parametrize("norm_stats", ["restore", "freeze"])
def test_script_runner_matches_library_path(parts: SimpleNamespace, norm_stats: str) -> None:
    """The ablation runner with the library's options (BN freeze), and with the old
    library's clone-and-restore of BN statistics, computes exactly what Backbone's
    checkpointing does (gradients and BatchNorm running statistics)."""
    from med_core.backbones import create_backbone

    torch.manual_seed(0)
    lib = create_backbone("resnet18", img_size=16)
    scr = copy.deepcopy(lib)
    lib.enable_gradient_checkpointing(2)
    opts = parts.CkptOptions(norm_stats=norm_stats, force_script=True)
    runner = parts.ScriptCheckpointed(scr, opts)
    runner.segments = 2
    x = torch.randn(2, 3, 16, 16)
    lib(x).square().mean().backward()
    runner(x).square().mean().backward()
    for (n, a), (_, b) in zip(lib.named_parameters(), scr.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=n)
    for a, b in zip(lib.buffers(), scr.buffers(), strict=True):  # BN statistics: exact
        assert torch.equal(a, b)


def test_counting_saved_tensors_frees_the_forward(parts: SimpleNamespace) -> None:
    """The saved-bytes count leaves nothing of its forward behind: with a pack hook that
    returned the tensor itself, a ReLU's output (saved by its own grad_fn) stayed alive in
    a reference cycle, and every configuration of the sweep leaked its activations."""
    ns = SimpleNamespace(in_chans=3, channels_last=False, amp_dtype=None)
    bench = parts.build_bench("resnet", "resnet18", (16, 16), torch.device("cpu"), ns)
    features = bench.configure(0, parts.CkptOptions())
    outputs: list[weakref.ref[torch.Tensor]] = []
    for unit in bench.backbone.units():
        unit.register_forward_hook(lambda m, a, out: outputs.append(weakref.ref(out)))
    x, y = bench.batch(2)
    assert parts.saved_tensor_bytes(bench, features, x, y) > 0
    gc.collect()
    assert len(outputs) == len(bench.backbone.units())
    assert [r() for r in outputs] == [None] * len(outputs)


def test_rule_picks_least_overhead_meeting_both_bounds(parts: SimpleNamespace) -> None:
    def row(k: int, saved: float, over: float) -> dict[str, object]:
        return {"segments": k, "status": "ok", "mem_saved_pct": saved, "overhead_pct": over}

    off = row(0, 0.0, 0.0)
    chosen, why = parts.choose([off, row(1, 90, 40), row(2, 70, 20), row(4, 55, 12), row(8, 40, 5)])
    assert chosen["segments"] == 4 and why == ""
    chosen, why = parts.choose([off, row(1, 90, 60), row(8, 40, 5)])
    assert chosen is None
    assert re.search(r"at most 40 % saved \(segments=8\)", why)
    assert re.search(r"costs at least 60 % time \(segments=1\)", why)


def test_options_labels(parts: SimpleNamespace) -> None:
    assert parts.CkptOptions().uses_library and parts.CkptOptions().label() == "library"
    assert parts.CkptOptions(force_script=True).label() == "script"
    opt = parts.CkptOptions(preserve_rng_state=False, skip_last=True)
    assert not opt.uses_library and opt.label() == "no_rng+skip_last"
    assert parts.CkptOptions(norm_stats="restore").label() == "norm_restore"
    assert parts.CkptOptions(norm_stats="update").label() == "no_norm_protect"
    keep = parts.CkptOptions(skip_last=True)  # the library's keep_last=True
    assert keep.uses_library and keep.label() == "keep_last"


def test_max_batch_search_and_noise_tie_break(parts: SimpleNamespace) -> None:
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= 37

    assert parts.search_max_batch(fits, 8, 4096, lambda: False) == (36, 38)
    assert probes[:4] == [8, 16, 32, 64]
    assert parts.search_max_batch(lambda b: b <= 3, 64, 4096, lambda: False) == (3, 4)
    assert parts.search_max_batch(lambda b: True, 8, 40, lambda: False) == (32, None)

    def row(k: int, saved: float, over: float) -> dict[str, object]:
        return {"segments": k, "status": "ok", "mem_saved_pct": saved, "overhead_pct": over}

    rows = [row(1, 84, 26.3), row(8, 65, 26.2), row(4, 74, 30.0)]
    assert parts.choose(rows)[0]["segments"] == 8  # least overhead
    assert parts.choose(rows, 0.5)[0]["segments"] == 1  # tie within noise: larger saving


def test_probe_worker_answers_and_exits_after_a_failure(parts: SimpleNamespace) -> None:
    """The max-batch probe child on CPU: a good batch fits, a bad one (batch -1 cannot be
    built) fails and ends the process, so the next probe would start a clean one."""
    spec = {
        "family": "resnet", "name": "resnet18", "size": [16, 16], "segments": 2,
        "keep_last": True, "device": "cpu", "cap_gib": 1.0, "dtype": "fp32", "in_chans": 3,
        "channels_last": False, "seed": 0,
    }  # fmt: skip
    worker = parts.ProbeWorker(spec)
    try:
        assert worker.probe(2)["fits"] is True
        child = worker._proc
        bad = worker.probe(-1)
        assert bad["fits"] is False and "RuntimeError" in bad["why"]
        assert child.wait(timeout=60) == 0 and worker._proc is None
    finally:
        worker.close()
