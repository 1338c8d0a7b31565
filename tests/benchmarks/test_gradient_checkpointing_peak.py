"""The peak report of benchmarks/gradient_checkpointing.py (``--peak-report``): its pure
parts (largest-batch prediction, bracket search, verdict, proposed budgets, snapshot
categories, rendering) on synthetic data, and a CPU smoke run (the GPU run is manual)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gradient_checkpointing.py"
MiB = 2**20


pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # the tiny models: one thread


@pytest.fixture
def parts(bench: ModuleType) -> SimpleNamespace:
    """The peak report's modules (the script put the repository root on ``sys.path``)."""
    from benchmarks import _gc_analysis
    from benchmarks import _gc_measure
    from benchmarks import _gc_peak
    from benchmarks import _gc_render
    from benchmarks import _gc_snapshot

    return SimpleNamespace(a=_gc_analysis, m=_gc_measure, p=_gc_peak, r=_gc_render, s=_gc_snapshot)


# ---------------------------------------------------------------- prediction and search
def test_max_batch_prediction_from_two_peaks(parts: SimpleNamespace) -> None:
    pred = parts.a.predict_max_batch
    # 100 MiB static + 16 MiB per sample: b64 → 1124, b128 → 2148; cap 20 GiB
    assert pred(64, 1124.0, 2148.0, 20 * 1024) == {
        "per_sample_mib": 16.0,
        "static_mib": 100.0,
        "predicted_max_batch": (20 * 1024 - 100) // 16,
    }
    # 24,936 MiB static: over the cap at any batch
    assert pred(64, 25000.0, 25064.0, 20 * 1024)["predicted_max_batch"] == 0
    none = {"per_sample_mib": None, "static_mib": None, "predicted_max_batch": None}
    assert pred(64, 1124.0, None, 20 * 1024) == none  # 2× batch did not run (OOM, CPU)
    assert pred(64, 1124.0, 1100.0, 20 * 1024) == none  # peak does not grow with batch


@pytest.mark.parametrize("truth", [93, 70, 140])
def test_bracket_search_starts_at_the_prediction(parts: SimpleNamespace, truth: int) -> None:
    lo_f, hi_f = parts.p.BRACKET
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= truth

    lo, hi = parts.m.search_max_batch(
        fits,
        round(lo_f * 100),  # prediction 100
        4096,
        lambda: False,
        factor=hi_f / lo_f,
        tol=parts.p.SEARCH_TOL,
    )
    assert lo <= truth < hi and hi - lo <= max(1, int(lo * parts.p.SEARCH_TOL))
    assert probes[0] == 90
    if truth >= 90:  # the second probe is 1.1× the prediction
        assert probes[1] == 110
    assert len(probes) <= 8  # near the prediction, few probes (each a child process)


def test_search_stops_at_the_deadline(parts: SimpleNamespace) -> None:
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= 93

    stop = lambda: len(probes) >= 2  # noqa: E731
    assert parts.m.search_max_batch(fits, 90, 4096, stop, factor=1.1 / 0.9) == (90, 110)
    assert probes == [90, 110]


# ---------------------------------------------------------------- verdict and proposal
def _setting(
    setting: str, budget: float | None, step: float, peak: float, pred: int, verified: int | None
) -> dict[str, Any]:
    return {
        "setting": setting,
        "budget": budget,
        "status": "ok",
        "reason": "",
        "plan": [] if setting == "off" else [[0, 3]],
        "plan_label": "none" if setting == "off" else "0–3 of 8",
        "step_ms": step,
        "peak_mib": peak,
        "predicted_max_batch": pred,
        "verified": None if verified is None else {"max_batch": verified, "images_per_s": 900.0},
    }


def _entry(parts: SimpleNamespace, family: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    e = {"family": family, "backbone": f"{family}_net", "size": [224, 224], "batch": 64}
    e.update(settings=rows, snapshots={}, status="ok", reason="", cap_gib=20.0)
    parts.a.add_peak_relative(e)
    e["verdict"] = parts.a.peak_verdict(e)
    return e


@pytest.fixture
def entries(parts: SimpleNamespace) -> list[dict[str, Any]]:
    a = _entry(
        parts,
        "a",
        [
            _setting("off", None, 100.0, 10000.0, 100, 96),
            _setting("0.3", 0.3, 140.0, 4000.0, 250, None),  # the most batch, too slow
            _setting("0.4", 0.4, 125.0, 5000.0, 200, None),  # the proposal
            _setting("0.5", 0.5, 110.0, 7000.0, 150, None),
            _setting("default", 0.4, 137.0, 7500.0, 140, 144),  # misses all three targets
        ],
    )
    b = _entry(
        parts,
        "b",
        [
            _setting("off", None, 100.0, 10000.0, 100, 100),
            _setting("0.3", 0.3, 160.0, 4000.0, 250, None),
            _setting("0.5", 0.5, 135.0, 7000.0, 150, None),  # least overhead, still > 30 %
            _setting("default", 0.4, 120.0, 5000.0, 230, 210),  # meets all
        ],
    )
    return [a, b]


def test_relative_numbers_and_verdict(entries: list[dict[str, Any]]) -> None:
    a, b = entries
    d = a["settings"][-1]
    assert d["overhead_pct"] == pytest.approx(37.0)
    assert d["peak_change_pct"] == pytest.approx(-25.0)
    assert d["predicted_gain"] == pytest.approx(1.4) and d["verified_gain"] == pytest.approx(1.5)
    assert a["settings"][0]["overhead_pct"] == 0.0
    v = a["verdict"]
    assert v["meets"] is False
    texts = [c["text"] for c in v["checks"]]
    assert texts == [
        "1.50× (verified): 0.50× short",  # the verified search wins over the prediction
        "+37 %: 7 points over",
        "-25 %: 15 points short",
    ]
    assert b["verdict"]["meets"] is True and b["verdict"]["text"] == "meets all targets"


def test_verdict_falls_back_to_the_prediction(parts: SimpleNamespace) -> None:
    off = _setting("off", None, 100, 10000, 100, None)
    e = _entry(parts, "c", [off, _setting("default", 0.4, 110, 5000, 250, None)])
    assert e["verdict"]["checks"][0]["text"] == "2.50× (predicted)"
    assert e["verdict"]["meets"] is True


def test_proposed_defaults(parts: SimpleNamespace, entries: list[dict[str, Any]]) -> None:
    data = {"command": "python x.py", "device": "cuda", "dtype": "bf16", "peak": entries}
    text = parts.a.propose_budget_defaults(data)
    ns: dict[str, Any] = {}
    exec(text, ns)  # valid Python: paste over FAMILY_DEFAULTS
    # a: the largest predicted gain within +30 % (0.4, not 0.3 at +40 %); b: none within,
    # so the least overhead, marked a miss
    assert ns["FAMILY_DEFAULTS"] == {"a": 0.4, "b": 0.5}
    (line_b,) = [ln for ln in text.splitlines() if ln.startswith('    "b"')]
    assert line_b.endswith("(miss)") and "+35 % step time" in line_b
    merged = parts.a.merge_peak_runs([{**data, "peak": entries[:1]}, {**data, "peak": entries[1:]}])
    assert [e["family"] for e in merged["peak"]] == ["a", "b"]
    assert merged["command"] == "python x.py\npython x.py"


# ---------------------------------------------------------------- snapshot analysis
CONV = {
    "filename": "/v/site-packages/torch/nn/modules/conv.py",
    "line": 543,
    "name": "_conv_forward",
}
MODULE = {
    "filename": "/v/site-packages/torch/nn/modules/module.py",
    "line": 1,
    "name": "_call_impl",
}
CKPT = {"filename": "/v/site-packages/torch/utils/checkpoint.py", "line": 9, "name": "recompute_fn"}


def test_classify_categories(parts: SimpleNamespace) -> None:
    def cls(phase: str, frames: list[dict[str, Any]], size: int = 3 * MiB, **kw: Any) -> str:
        opts = {"is_param_grad": False, "is_scratch": False, "weight_copy_sizes": frozenset()}
        return parts.s.classify(phase, frames, size, **{**opts, **kw})

    copies = frozenset({MiB})
    assert cls("forward", [CONV, MODULE]) == "forward"
    assert cls("forward", [CONV, MODULE], MiB, weight_copy_sizes=copies) == "autocast"
    assert cls("backward", [CONV, MODULE, CKPT], MiB, weight_copy_sizes=copies) == "autocast"
    assert cls("backward", [CONV, MODULE, CKPT]) == "recompute"
    assert cls("backward", []) == "act_grad"  # autograd's engine: no Python stack
    assert cls("backward", [], MiB, weight_copy_sizes=copies) == "act_grad"
    assert cls("backward", [], is_param_grad=True) == "param_grad"
    assert cls("forward", [CONV], is_scratch=True) == "scratch"
    assert cls("optimizer", [CONV]) == "optimizer"
    assert parts.s.frame_label([MODULE, CONV]) == "torch/nn/modules/conv.py:543 _conv_forward"
    assert parts.s.frame_label([]) == "(no Python frame)"


def _trace(parts: SimpleNamespace) -> tuple[list[dict[str, Any]], list[str]]:
    """One synthetic step: 10 MiB before it (1 MiB of it freed), two units, a
    recomputation of unit 0 in backward, a parameter gradient; the peak is 23.5 MiB."""
    mark = [{"filename": "/r/benchmarks/_gc_snapshot.py", "line": 1, "name": parts.s.MARK_FRAME}]
    trace: list[dict[str, Any]] = []

    def alloc(addr: int, mib: float, frames: list[dict[str, Any]]) -> None:
        trace.append({"action": "alloc", "addr": addr, "size": int(mib * MiB), "frames": frames})

    def free(addr: int, mib: float) -> None:
        for action in ("free_requested", "free_completed"):
            trace.append({"action": action, "addr": addr, "size": int(mib * MiB), "frames": []})

    def marker() -> None:
        trace.append({"action": "alloc", "addr": 900, "size": 512, "frames": mark})
        free(900, 512 / MiB)

    labels = ["forward", "unit 0", "unit 1", "head", "backward", "unit 0", "optimizer", "end"]
    marker()  # forward
    marker()  # unit 0
    alloc(1, 4, [CONV, MODULE])  # activation of unit 0
    alloc(2, 1, [CONV, MODULE])  # bf16 weight copy
    alloc(3, 8, [CONV, MODULE])  # workspace: freed before the next allocation
    free(3, 8)
    marker()  # unit 1
    alloc(4, 2, [CONV, MODULE])
    free(50, 1)  # a block from before the step
    marker()  # head
    marker()  # backward
    trace.append({"action": "segment_alloc", "addr": 0, "size": 64 * MiB, "frames": []})
    alloc(5, 3, [])  # gradient of an activation
    free(4, 2)
    marker()  # unit 0 again: recomputation
    alloc(6, 5, [CONV, MODULE, CKPT])
    alloc(7, 1.5, [])  # a parameter's gradient: the peak
    for addr, mib in ((6, 5), (5, 3), (1, 4), (2, 1)):
        free(addr, mib)
    marker()  # optimizer
    alloc(8, 1, [])
    alloc(9, 1, [])
    free(8, 1)
    free(9, 1)  # freed before any other allocation: scratch
    marker()  # end
    return trace, labels


@pytest.fixture
def analysis(parts: SimpleNamespace) -> dict[str, Any]:
    trace, labels = _trace(parts)
    return parts.s.analyze_trace(
        trace,
        baseline_bytes=10 * MiB,
        labels=labels,
        grad_addrs={7},
        weight_copy_sizes={MiB},
        top=4,
    )


def test_analyze_trace_names_what_is_live_at_the_peak(
    parts: SimpleNamespace, analysis: dict[str, Any]
) -> None:
    a = analysis
    assert a["peak_mib"] == pytest.approx(23.5)
    assert (a["peak_phase"], a["peak_unit"]) == ("backward", "unit 0")
    assert a["markers"] == 8
    cats = {c["category"]: c["mib"] for c in a["by_category"]}
    assert cats == pytest.approx(
        {"before": 9, "recompute": 5, "forward": 4, "act_grad": 3, "param_grad": 1.5, "autocast": 1}
    )
    assert [c["category"] for c in a["by_category"]][:2] == ["before", "recompute"]
    groups = {(g["category"], g["detail"]): g for g in a["groups"]}
    assert groups[("recompute", "unit 0")]["frame"] == "torch/nn/modules/conv.py:543 _conv_forward"
    assert groups[("forward", "unit 0")]["mib"] == pytest.approx(4)
    assert len(a["groups"]) == 4  # top
    assert [b["mib"] for b in a["largest"]] == pytest.approx([5, 4, 3, 1.5])
    assert [p[0] for p in a["phases"]] == ["forward", "backward", "optimizer"]
    tl = a["timeline"]
    series = dict(zip(tl["categories"], tl["series"], strict=True))
    assert max(series["scratch"]) == pytest.approx(8)  # the workspace, short-lived
    assert max(series["optimizer"]) == pytest.approx(1)
    assert a["peak_event"] in tl["x"]
    assert max(sum(col) for col in zip(*tl["series"], strict=True)) == pytest.approx(23.5)


# ---------------------------------------------------------------- rendering
def test_render_peak_report_and_timeline(
    parts: SimpleNamespace,
    entries: list[dict[str, Any]],
    analysis: dict[str, Any],
    tmp_path: Path,
) -> None:
    png = tmp_path / "snaps" / "a_off.png"
    assert parts.s.write_timeline_png(analysis, png, "a off", None) is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 100_000
    snap = {k: v for k, v in analysis.items() if k != "timeline"}
    snap.update(measured_peak_mib=23.6, wrapped=False, png="a_off.png")
    entries = copy.deepcopy(entries)
    entries[0]["snapshots"] = {"off": snap, "default": {**snap, "png": "a_default.png"}}
    data = {
        "command": "python benchmarks/gradient_checkpointing.py --peak-report",
        "status": "complete",
        "elapsed_s": 12.0,
        "device": "cuda",
        "dtype": "bf16",
        "env": {"GPU": "H200"},
        "args": {"mem_cap_gib": 20.0, "repeats": 5, "warmup": 2, "json": None},
        "notes": ["a note"],
        "peak": entries,
    }
    md = parts.r.render_peak_markdown(data, "snaps")
    assert "python benchmarks/gradient_checkpointing.py --peak-report" in md
    assert "> a note" in md and "| GPU | H200 |" in md
    verdict = md[md.index("## Verdict") : md.index("## Per family")]
    assert "✗ 1.50× (verified): 0.50× short" in verdict and "✗ +37 %: 7 points over" in verdict
    assert "**meets**" in verdict  # family b
    rows = [ln for ln in md.splitlines() if ln.startswith("| a | default (0.40) |")]
    assert len(rows) == 1 and "| 144 |" in rows[0] and "| 1.50× |" in rows[0]
    assert "![a off](snaps/a_off.png) ![a default](snaps/a_default.png)" in md
    assert "| recompute | unit 0 | 5 | 1 | `torch/nn/modules/conv.py:543 _conv_forward` |" in md
    assert "| recomputation in checkpoint (backward) | 5 | 5 |" in md
    assert '    "a": 0.4,' in md  # the proposal


# ---------------------------------------------------------------- CPU smoke run
def test_peak_report_cpu_smoke(bench: ModuleType, tmp_path: Path, capsys: Any) -> None:
    from med_core.backbones import get_backbone_cfg

    out, js = tmp_path / "peak.md", tmp_path / "peak.json"
    argv = [
        "--device", "cpu", "--peak-report", "--sizes", "16", "--batch-sizes", "2",
        "--families", "resnet", "--backbone", "resnet=resnet18", "--budgets", "0.3",
        "--peak-extra", "0.3+selective+offload", "--warmup", "1", "--repeats", "1",
        "--watchdog-grace", "0",
        "--out", str(out), "--json", str(js),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["status"] == "complete"
    (entry,) = data["peak"]
    assert (entry["backbone"], entry["size"], entry["batch"]) == ("resnet18", [16, 16], 2)
    rows = {s["setting"]: s for s in entry["settings"]}
    assert list(rows) == ["off", "0.3", "default", "0.3+selective+offload"]
    assert all(s["status"] == "ok" and s["step_ms"] > 0 for s in rows.values())
    assert rows["off"]["plan"] == [] and rows["off"]["budget"] is None
    assert rows["0.3"]["budget"] == 0.3 and rows["0.3"]["plan"]
    family_budget = get_backbone_cfg("resnet18").default_memory_budget
    assert rows["default"]["budget"] == family_budget and rows["default"]["plan"]
    assert all(s["peak_mib"] is None and s["verified"] is None for s in rows.values())  # CPU
    md = out.read_text(encoding="utf-8")
    assert "CPU run: no device memory" in md and "| resnet | budget 0.3 |" in md
    assert "| resnet | budget 0.3 + selective + offload |" in md
    assert rows["0.3+selective+offload"]["plan"] == rows["0.3"]["plan"]  # same plan, options

    # two runs (the families split over two calls) merge into one report and one proposal
    other = copy.deepcopy(data)
    other["peak"][0]["family"] = "other"
    other["command"] = "python second.py"
    js2 = tmp_path / "other.json"
    js2.write_text(json.dumps(other), encoding="utf-8")
    merged = tmp_path / "merged.md"
    assert bench.main(["--render-from", str(js), str(js2), "--out", str(merged)]) == 0
    text = merged.read_text(encoding="utf-8")
    assert "| resnet | off |" in text and "| other | off |" in text
    assert "python second.py" in text
    capsys.readouterr()
    assert bench.main(["--propose-defaults", str(js), str(js2)]) == 0
    ns: dict[str, Any] = {}
    exec(capsys.readouterr().out, ns)
    assert set(ns["FAMILY_DEFAULTS"]) == {"resnet", "other"}


def test_probe_worker_runs_a_budget_setting_and_times_its_step(parts: SimpleNamespace) -> None:
    spec = {
        "family": "resnet", "name": "resnet18", "size": [16, 16], "segments": 0,
        "keep_last": False, "setting": "0.3", "device": "cpu", "cap_gib": 1.0,
        "dtype": "fp32", "in_chans": 3, "channels_last": False, "seed": 0,
    }  # fmt: skip
    worker = parts.m.ProbeWorker(spec)
    try:
        res = worker.probe(2)
        assert res["fits"] is True and res["step_ms"] > 0
        bad = worker.probe(-1)
        assert bad["fits"] is False and bad["step_ms"] is None
    finally:
        worker.close()
