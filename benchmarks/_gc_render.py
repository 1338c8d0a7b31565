"""The Markdown report of the gradient-checkpointing benchmark (the format of
``docs/benchmarks/gradient_checkpointing*.md``) and its console summaries.
"""

from __future__ import annotations

from typing import Any

from benchmarks._common import environment_table
from benchmarks._common import fmt
from benchmarks._common import markdown_table
from benchmarks._gc_analysis import propose_budget_defaults
from benchmarks._gc_measure import NUM_CLASSES
from benchmarks._gc_measure import RULE_MAX_OVERHEAD_PCT
from benchmarks._gc_measure import RULE_MIN_SAVED_PCT
from benchmarks._gc_measure import SCHEMA_VERSION
from benchmarks._gc_measure import Run
from benchmarks._gc_measure import _size_label

__all__ = ["render_markdown", "render_peak_markdown"]


# ============================================================================ Markdown
_HYPOTHESES = """\
The issue's reference run (timm per-block checkpointing, 224 px, batch 64, bf16, H200)
cost 59–195 % more step time, where one extra forward pass should cost about a third of a
step. Candidate causes, and how this script tests each one:

1. **More recomputation than one forward.** The library checkpoints *every* group,
   including the last one (unlike `checkpoint_sequential`), so every unit's forward runs
   twice; per-block checkpointing (`segments = max`) also checkpoints blocks whose
   activations are cheap to keep. *Test*: the "1 extra fwd %" column (forward + loss
   time / step time, measured with checkpointing off) is the expected overhead of
   recomputing everything; `--ablate` variant `skip_last` leaves the last group out.
2. **Memory-bound ops recomputed.** BatchNorm/LayerNorm, activations, residual adds and
   depthwise convolutions are bandwidth-bound: a larger share of *time* than of FLOPs, and
   recomputation repeats all of them. *Test*: `--profile` category table (device ms per
   step in convolution / matmul / norm / elementwise, off vs. checkpointed).
3. **BatchNorm running-statistics restore.** Before each recomputation the library clones
   `running_mean`, `running_var`, `num_batches_tracked` of every BatchNorm in the group
   and copies them back afterwards (≈ 6 tiny kernels per BN layer per step; ResNet-50 has
   53 BN layers), and `_contexts` walks `unit.modules()` in Python on every forward.
   *Test*: `--ablate` variants `no_norm_restore` (no protection) and `norm_freeze` (the
   proposed fix: BN `momentum = 0` while recomputing, `num_batches_tracked -= 1` after:
   same state, 1 instead of 6 small kernels per BN layer);
   `aten::clone`/`aten::copy_` calls per
   step in `--profile`.
4. **CPU launch overhead.** At 28 px and at small batches the step is bound by the host:
   every recomputed op is another launch, and non-reentrant checkpoint adds Python work per
   saved tensor (pack/unpack hooks) and per group (frame, RNG state, determinism metadata).
   *Test*: `host ms` vs `step ms` in the tables (host ≈ step means launch-bound), GPU busy
   share and launches per step in `--profile`.
5. **RNG-state preservation** (`preserve_rng_state=True`): CPU and CUDA generator state
   are captured per group in forward and restored (`fork_rng`) per recomputation.
   *Test*: `--ablate` variant `no_rng`. Note: turning it off is only correct for groups
   without randomness; torchvision's ConvNeXt/Swin/EfficientNet/MaxViT use stochastic
   depth in training, so for them it would change the recomputed drop masks.
6. **Autocast re-casts weights.** Autocast caches the bf16 copy of each weight only
   inside the outermost `autocast` region; recomputation runs during backward, outside it,
   so checkpoint re-enters autocast and casts every weight of the group again (one extra
   `aten::_to_copy` kernel per weight tensor). *Test*: `aten::_to_copy` calls per step in
   `--profile` (off vs. checkpointed).
7. **Determinism check** (`determinism_check="default"`): shape/dtype/device metadata of
   every recomputed saved tensor is compared in Python. *Test*: `--ablate` `no_detcheck`.
8. **Lost fusion / algorithm choice.** Eager recomputation runs the same kernels as the
   first forward (no fusion is lost in eager mode); cuDNN algorithm choice is unchanged
   unless `--cudnn-benchmark` is given. A compiled (`torch.compile`) step would fuse the
   recomputed elementwise ops, which this benchmark does not measure.
"""


def _method_md(run: Run) -> str:
    a = run.args
    cpu = run.device == "cpu"
    lines = [
        f"- Training step: `backbone → Linear({NUM_CLASSES})`, cross-entropy, `backward()`, "
        f"SGD (momentum 0.9), `zero_grad(set_to_none=True)`; {run.dtype}"
        + ("" if cpu else " (bf16 via `torch.autocast`)" if run.dtype == "bf16" else "")
        + f"; {a['in_chans']} input channels; channels_last={a['channels_last']}.",
        f"- Checkpointing: `Backbone.enable_gradient_checkpointing(segments)` (variant "
        f"`{a['variant']}`); segments are contiguous groups of the backbone's units, every "
        "group checkpointed (non-reentrant).",
        f"- Step time: median of up to {a['repeats']} steps after {a['warmup']} warm-up steps "
        "(≤ {0:g} s of timed steps per configuration); ".format(a["max_config_seconds"])
        + (
            "host wall clock."
            if cpu
            else "CUDA events, device synchronized before every step. "
            "*host ms*: time to issue one step from Python (≈ step ms: launch-bound)."
        ),
        "- *saved MiB*: unique storages saved for backward during forward + loss "
        "(`torch.autograd.graph.saved_tensors_hooks`), parameters/buffers excluded.",
    ]
    if cpu:
        lines.append(
            "- **CPU run: peak device memory and resident activation memory are not "
            "available; the peak/act columns read –, and *mem saved %* is computed "
            "from saved-for-backward bytes.** Step times on a shared CPU are noisy."
        )
    else:
        lines.append(
            "- *peak MiB*: `torch.cuda.max_memory_allocated` over the timed steps "
            "(parameters, gradients, momentum, activations, workspaces). *act MiB*: "
            "`memory_allocated` after forward + loss minus before it (activations "
            "resident until backward, incl. autocast weight copies)."
        )
    metric = {"act": "act MiB", "saved": "saved MiB", "peak": "peak MiB"}[run.rule_metric]
    lines.append(
        f"- *mem saved %* = 1 − {metric}(segments) / {metric}(off), same size and batch; "
        "*overhead %* = step ms(segments) / step ms(off) − 1."
    )
    lines.append(
        "- *noise %*: |step ms of a second `off` run of the reference configuration, measured "
        "after all its checkpointed rows| / first `off` − 1: overhead differences below it are "
        "noise. *1 extra fwd %*: forward + loss time / step time with checkpointing off (what "
        "recomputing the whole network once should cost)."
    )
    lines.append(
        f"- Rule for the proposed default: *mem saved* ≥ {RULE_MIN_SAVED_PCT:.0f} % and "
        f"*overhead* ≤ {RULE_MAX_OVERHEAD_PCT:.0f} % at the reference configuration "
        "(largest size, middle batch); among those the least overhead. *holds* counts "
        "the other measured sizes/batches where the same segments also meets it."
    )
    return "\n".join(lines)


def _header(title: str, data: dict[str, Any], method: str, proposes: str) -> list[str]:
    """Title, status, the command(s), the CPU warning, environment, method and notes of a
    report; ``data`` is a run's JSON form (``Run.to_json``)."""
    out = [f"# {title}", ""]
    out.append(
        f"Generated by `benchmarks/gradient_checkpointing.py` (status: **{data['status']}**, "
        f"{float(data['elapsed_s']):.0f} s). Regenerate with:"
    )
    out += ["", "```", data["command"], "```", ""]
    if data["device"] == "cpu":
        out += [
            "> **CPU smoke run.** It checks that the benchmark runs end to end; its step "
            f"times (shared CPU, tiny batch) and the {proposes} it proposes are **not** data "
            "for setting defaults. Regenerate on the GPU (`--device cuda`).",
            "",
        ]
    out += ["## Environment", "", environment_table(data["env"]), ""]
    out += ["## Method", "", method, ""]
    out += [f"> {n}" for n in data["notes"]]
    if data["notes"]:
        out.append("")
    return out


def render_markdown(run: Run, plot_rel: str | None) -> str:
    cpu = run.device == "cpu"
    out = _header(
        "Gradient checkpointing: memory saved vs. step time",
        run.to_json(),
        _method_md(run),
        "segments",
    )

    if run.summary:
        out += ["## Proposed default segments", ""]
        rows = []
        for s in run.summary:
            ok = s["meets_rule"]
            holds = f"{s['holds']}/{s['holds_of']}" if s.get("holds_of") else "–"
            rows.append(
                [
                    s["family"],
                    s["backbone"],
                    f"{_size_label(s['ref_size'])} b{s['ref_batch']}",
                    fmt(s["off_step_ms"]),
                    fmt(s["one_fwd_pct"], 0),
                    fmt(s.get("noise_pct"), 1),
                    s["library_default"],
                    f"{fmt(s['library_default_saved_pct'], 0)} / "
                    f"{fmt(s['library_default_overhead_pct'], 0)}",
                    s["proposed_label"] if ok else "**none meets the rule**",
                    fmt(s["mem_saved_pct"], 0),
                    fmt(s["overhead_pct"], 0),
                    holds,
                    "" if ok else s["why_not"],
                ]
            )
        out.append(
            markdown_table(
                [
                    "family",
                    "backbone",
                    "ref config",
                    "off step ms",
                    "1 extra fwd %",
                    "noise %",
                    "lib default",
                    "lib default saved % / overhead %",
                    "proposed segments",
                    "mem saved %",
                    "overhead %",
                    "holds",
                    "note",
                ],
                rows,
                align="lllrrrrrrrrrl",
            )
        )
        out.append("")

    if run.max_batch:
        out += [f"## Largest batch under {run.args['mem_cap_gib']:g} GiB", ""]
        by: dict[tuple[str, str, tuple[int, ...]], list[dict[str, Any]]] = {}
        for m in run.max_batch:
            by.setdefault((m["family"], m["backbone"], tuple(m["size"])), []).append(m)
        rows = []
        for (fam, name, size), ms in by.items():
            off = next((m for m in ms if m["segments"] == 0), None)
            on = next((m for m in ms if m["segments"] > 0), None)

            def cell(m: dict[str, Any] | None) -> str:
                if m is None:
                    return "–"
                if m["status"] != "ok":
                    return m["status"]
                v = str(m["max_batch"])
                if m.get("first_fail"):
                    v += f" (fails at {m['first_fail']})"
                return v + (f" [{m['reason']}]" if m.get("reason") else "")

            gain = (
                on["max_batch"] / off["max_batch"]
                if on and off and on.get("max_batch") and off.get("max_batch")
                else None
            )
            rows.append(
                [
                    fam,
                    name,
                    _size_label(size),
                    cell(off),
                    on["segments"] if on else "–",
                    cell(on),
                    f"{gain:.2f}×" if gain else "–",
                ]
            )
        out.append(
            markdown_table(
                ["family", "backbone", "size", "off", "segments", "checkpointed", "gain"],
                rows,
                align="lllrrrr",
            )
        )
        out.append("")

    ref_rows = _overhead_table(run)
    out += ["## Where the time goes", ""]
    if ref_rows:
        out += [
            "Measured overhead per segments vs. the cost of one extra forward pass "
            "(at the middle batch size of each family):",
            "",
            ref_rows,
            "",
        ]
    out += [_HYPOTHESES, ""]
    if run.ablation:
        out += ["### Ablation of checkpoint options (`--ablate`)", "", _ablation_table(run), ""]
    if run.profile:
        out += ["### Profiles (`--profile`)", "", _profile_md(run), ""]

    if plot_rel:
        out += ["## Plot", "", f"![memory saved vs. time overhead]({plot_rel})", ""]

    res = [r for r in run.results if r["phase"] != "ablation"]
    if res:
        out += ["## Results per family", ""]
        if cpu:
            out += [
                "*CPU: peak/act columns are not available (–); mem saved % uses saved MiB.*",
                "",
            ]
        fams: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in res:
            fams.setdefault((r["family"], r["backbone"]), []).append(r)
        for (fam, name), rs in fams.items():
            out += [f"### {fam} ({name})", ""]
            rs = sorted(rs, key=lambda r: (r["size"], r["batch"], r["variant"], r["segments"]))
            rows = []
            for r in rs:
                ok = r["status"] == "ok"
                rows.append(
                    [
                        _size_label(r["size"]),
                        r["batch"],
                        r["segments_label"],
                        fmt(r.get("peak_mib"), 0) if ok else "–",
                        fmt(r.get("act_mib"), 0) if ok else "–",
                        fmt(r.get("saved_mib"), 1) if ok else "–",
                        fmt(r.get("mem_saved_pct"), 1) if ok else "–",
                        fmt(r.get("peak_saved_pct"), 1) if ok else "–",
                        fmt(r.get("step_ms"), 2) if ok else "–",
                        fmt(r.get("host_ms"), 2) if ok else "–",
                        fmt(r.get("overhead_pct"), 1) if ok else "–",
                        "ok"
                        if ok
                        else f"{r['status']}" + (f": {r['reason']}" if r["reason"] else ""),
                    ]
                    + ([r["variant"]] if run.args["variant"] != "library" else [])
                )
            headers = [
                "size",
                "batch",
                "segments",
                "peak MiB",
                "act MiB",
                "saved MiB",
                "mem saved %",
                "peak saved %",
                "step ms",
                "host ms",
                "overhead %",
                "status",
            ]
            if run.args["variant"] != "library":
                headers.append("variant")
            out.append(
                markdown_table(headers, rows, align="lrl" + "r" * 8 + "l" * (len(headers) - 11))
            )
            out.append("")
    if run.args.get("json"):
        out += [f"Raw results: `{run.args['json']}` (schema {SCHEMA_VERSION}).", ""]
    return "\n".join(out)


def _overhead_table(run: Run) -> str:
    res = [r for r in run.results if r["phase"] in ("ref", "grid") and r["status"] == "ok"]
    if not res:
        return ""
    segs = sorted({r["segments"] for r in res if r["segments"] > 0})
    groups: dict[tuple[str, str, tuple[int, ...], int], dict[int, dict[str, Any]]] = {}
    for r in res:
        groups.setdefault((r["family"], r["backbone"], tuple(r["size"]), r["batch"]), {})[
            r["segments"]
        ] = r
    mids: dict[tuple[str, str, tuple[int, ...]], list[int]] = {}
    for fam, name, size, batch in groups:
        mids.setdefault((fam, name, size), []).append(batch)
    rows = []
    for (fam, name, size, batch), by in groups.items():
        bs = sorted(mids[(fam, name, size)])
        if batch != bs[len(bs) // 2]:
            continue
        off = by.get(0)
        if off is None:
            continue
        cells = []
        for k in segs:
            rk = by.get(k)
            cells.append(fmt(rk.get("overhead_pct"), 0) if rk else "")
        mx = max((k for k in by if k > 0), default=None)
        host_ratio = off["host_ms"] / off["step_ms"] if off.get("step_ms") else None
        rows.append(
            [
                fam,
                _size_label(size),
                batch,
                fmt(off["step_ms"], 2),
                fmt(host_ratio, 2) if run.device != "cpu" else "–",
                fmt(off.get("one_fwd_pct"), 0),
                *cells,
                fmt(by[mx]["host_ms"] - off["host_ms"], 2) if mx else "–",
            ]
        )
    return markdown_table(
        [
            "family",
            "size",
            "batch",
            "off step ms",
            "off host/step",
            "1 extra fwd %",
            *[f"seg {k} overhead %" for k in segs],
            "Δ host ms (most seg)",
        ],
        rows,
        align="llr" + "r" * (3 + len(segs) + 1),
    )


def _ablation_table(run: Run) -> str:
    rows = []
    base = {
        (r["backbone"], tuple(r["size"]), r["batch"], r["segments"]): r
        for r in run.ablation
        if r["status"] == "ok" and r["variant"] == "library"
    }
    for r in run.ablation:
        ok = r["status"] == "ok"
        lib = base.get((r["backbone"], tuple(r["size"]), r["batch"], r["segments"]))
        delta = (r["step_ms"] - lib["step_ms"]) if ok and lib and r["segments"] > 0 else None
        rows.append(
            [
                r["family"],
                f"{_size_label(r['size'])} b{r['batch']}",
                r["segments_label"],
                r["variant"] if r["segments"] else "off",
                fmt(r.get("step_ms"), 2) if ok else r["status"],
                fmt(r.get("host_ms"), 2) if ok else "–",
                fmt(r.get("overhead_pct"), 1) if ok else "–",
                fmt(delta, 2),
                fmt(r.get("mem_saved_pct"), 1) if ok else "–",
            ]
        )
    return markdown_table(
        [
            "family",
            "config",
            "segments",
            "variant",
            "step ms",
            "host ms",
            "overhead %",
            "Δ vs library ms",
            "mem saved %",
        ],
        rows,
        align="lllrrrrrr",
    )


def _profile_md(run: Run) -> str:
    out = []
    cuda = run.device != "cpu"
    unit = "device" if cuda else "CPU"
    for p in run.profile:
        out.append(
            f"#### {p['family']} ({p['backbone']}), {_size_label(p['size'])}, batch {p['batch']}"
        )
        out.append("")
        settings = p["settings"]
        if not settings:
            out += [f"not profiled: {p.get('reason', '')}", ""]
            continue
        rows = []
        for s in settings:
            pr = s["prof"]
            busy = (
                (100.0 * pr["gpu_ms_per_step"] / s["step_ms"])
                if cuda and pr["gpu_ms_per_step"] and s["step_ms"]
                else None
            )
            rows.append(
                [
                    s["label"],
                    fmt(s["step_ms"], 2),
                    fmt(s["host_ms"], 2),
                    fmt(pr["gpu_ms_per_step"], 2),
                    fmt(busy, 0),
                    fmt(pr["device_ops_per_step"], 0),
                    fmt(pr["launches_per_step"], 0),
                    fmt(pr["aten_calls_per_step"], 0),
                    *[
                        fmt(pr["counted_ops"].get(n), 0)
                        for n in (
                            "aten::_to_copy",
                            "aten::clone",
                            "aten::copy_",
                            "aten::batch_norm",
                            "aten::layer_norm",
                        )
                    ],
                ]
            )
        out.append(
            markdown_table(
                [
                    "setting",
                    "step ms",
                    "host ms",
                    "GPU ms/step",
                    "GPU busy %",
                    "GPU ops/step",
                    "launches/step",
                    "aten calls/step",
                    "_to_copy",
                    "clone",
                    "copy_",
                    "batch_norm",
                    "layer_norm",
                ],
                rows,
                align="l" + "r" * 12,
            )
        )
        out.append("")
        cats = sorted({c for s in settings for c in s["prof"]["categories_ms"]})
        rows = [
            [c, *[fmt(s["prof"]["categories_ms"].get(c, 0.0), 2) for s in settings]] for c in cats
        ]
        out.append(
            markdown_table(
                [f"self {unit} ms/step by category", *[s["label"] for s in settings]], rows
            )
        )
        out.append("")
        off = settings[0]["prof"]["ops"]
        for s in settings[1:]:
            on = s["prof"]["ops"]
            key = "self_device_ms" if cuda else "self_cpu_ms"
            deltas = []
            for name in set(off) | set(on):
                a, b = off.get(name, {}), on.get(name, {})
                deltas.append((b.get(key, 0.0) - a.get(key, 0.0), name, a, b))
            deltas.sort(reverse=True)
            rows = [
                [
                    n[:70],
                    fmt(a.get("calls", 0.0), 0),
                    fmt(b.get("calls", 0.0), 0),
                    fmt(a.get(key, 0.0), 3),
                    fmt(b.get(key, 0.0), 3),
                    fmt(d, 3),
                ]
                for d, n, a, b in deltas[: run.args["profile_top"]]
            ]
            out.append(f"Ops that grew most, `{s['label']}` vs `off` (self {unit} ms per step):")
            out.append("")
            out.append(
                markdown_table(
                    [
                        "op",
                        "calls off",
                        f"calls {s['label']}",
                        "ms off",
                        f"ms {s['label']}",
                        "Δ ms",
                    ],
                    rows,
                )
            )
            out.append("")
    return "\n".join(out)


def _print_profile_console(p: dict[str, Any], cuda: bool, top: int) -> None:
    key = "self_device_ms" if cuda else "self_cpu_ms"
    print(
        f"\n=== profile {p['family']} ({p['backbone']}) {_size_label(p['size'])} "
        f"batch {p['batch']} ==="
    )
    for s in p["settings"]:
        pr = s["prof"]
        print(
            f"-- {s['label']}: step {s['step_ms']:.2f} ms, host {s['host_ms']:.2f} ms, "
            f"GPU {fmt(pr['gpu_ms_per_step'], 2)} ms/step, "
            f"device ops/step {fmt(pr['device_ops_per_step'], 0)}, "
            f"launches/step {fmt(pr['launches_per_step'], 0)}, "
            f"aten calls/step {pr['aten_calls_per_step']:.0f}"
        )
        ops = sorted(pr["ops"].items(), key=lambda kv: -kv[1][key])[:top]
        print(
            f"   {'op (per step)':60s} {'calls':>7s} {'self_device_ms':>14s} {'self_cpu_ms':>12s}"
        )
        for name, o in ops:
            dev_ms = f"{o['self_device_ms']:14.3f}" if cuda else f"{'–':>14s}"
            print(f"   {name[:60]:60s} {o['calls']:7.0f} {dev_ms} {o['self_cpu_ms']:12.3f}")


# ============================================================================ peak report
def _setting_label(s: dict[str, Any]) -> str:
    if s["setting"] == "off":
        return "off"
    base, _, options = s["setting"].partition("+")
    extra = f" + {options.replace('+', ' + ')}" if options else ""
    if base == "default":
        label = f"default ({fmt(s.get('budget'), 2)})" if s.get("budget") else "default"
        return label + extra
    return f"budget {base}{extra}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.0f}"


def _peak_method_md(data: dict[str, Any]) -> str:
    a = data["args"]
    cap = a["mem_cap_gib"]
    return "\n".join(
        [
            f"- Training step: `backbone → Linear({NUM_CLASSES})`, cross-entropy, `backward()`, "
            f"SGD (momentum 0.9), `zero_grad(set_to_none=True)`; {data['dtype']}"
            + (" (`torch.autocast`)" if data["dtype"] == "bf16" else "")
            + ". Each family's representative at its largest `--sizes`/`--sizes-3d` and the "
            "middle `--batch-sizes`/`--batch-sizes-3d` (the *fixed batch*).",
            "- Settings: `off`; `budget b`: `enable_gradient_checkpointing(memory_budget=b)`; "
            "`default`: `enable_gradient_checkpointing()` (the family's `FAMILY_DEFAULTS` "
            "budget). *plan*: the checkpointed unit ranges `backbone.checkpoint_plan` after "
            "the first training forward (the units after the last range run plainly).",
            f"- *step ms*: median of up to {a['repeats']} steps after {max(1, a['warmup'])} "
            "warm-up steps ("
            + ("host clock" if data["device"] == "cpu" else "CUDA events")
            + "); *overhead* vs `off` at the same batch. *resident MiB*: "
            "`memory_allocated` before a step (parameters, optimizer state, inputs): the "
            "same in every setting, or something leaks.",
            "- *peak MiB*: `torch.cuda.max_memory_allocated` over those steps (optimizer step "
            "included); *MiB/sample* = (peak at 2 × batch − peak) / batch; *predicted max "
            f"b* = (cap − static) / per-sample with static = peak − batch × per-sample, cap "
            f"{cap:g} GiB.",
            f"- *verified max b* (`off`, `default`): every probe in a child process under "
            f"`torch.cuda.set_per_process_memory_fraction({cap:g} GiB / total)` (a failed "
            "probe ends the child; the next starts clean), first at 0.9× the prediction, "
            "then 1.1×, then bisection to within 5 %; *img/s at own max*: one timed step "
            "of the child at its largest fitting batch. The cap limits *reserved* memory, "
            "so the verified batch can fall short of the prediction (allocator blocks).",
            "- Targets (issue 15) for `default`: largest batch ≥ 2× `off`'s (verified where "
            "searched, else predicted), step time ≤ +30 % at the fixed batch, peak at the "
            "fixed batch −40 % or less.",
        ]
    )


def _snapshot_md(entry: dict[str, Any], link_dir: str | None) -> list[str]:
    snaps = entry.get("snapshots") or {}
    out = [f"### {entry['family']} ({entry['backbone']})", ""]
    pics = [
        f"![{entry['family']} {k}]({link_dir}/{v['png']})"
        for k, v in snaps.items()
        if v.get("png") and link_dir is not None
    ]
    if pics:
        out += [" ".join(pics), ""]
    for k, v in snaps.items():
        out.append(
            f"- **{k}**: peak {v['peak_mib']:.0f} MiB from the trace "
            f"(`max_memory_allocated` {v['measured_peak_mib']:.0f} MiB) in the "
            f"{v['peak_phase']} phase at {v['peak_unit'] or '–'}; {v['events']} allocator "
            "events" + (" (**trace wrapped: its start is missing**)" if v.get("wrapped") else "")
        )
    out.append("")
    cats = list(dict.fromkeys(c["label"] for v in snaps.values() for c in v["by_category"]))
    rows = [
        [c]
        + [
            fmt(next((x["mib"] for x in v["by_category"] if x["label"] == c), None), 0)
            for v in snaps.values()
        ]
        for c in cats
    ]
    out += [
        markdown_table(["live at the peak (MiB)", *snaps], rows, align="l" + "r" * len(snaps)),
        "",
    ]
    for k, v in snaps.items():
        rows = [
            [g["category"], g["detail"] or "–", fmt(g["mib"], 0), g["blocks"], f"`{g['frame']}`"]
            for g in v["groups"]
        ]
        out += [
            f"Largest groups live at the peak, **{k}**:",
            "",
            markdown_table(
                ["category", "unit", "MiB", "blocks", "largest frame"], rows, align="llrrl"
            ),
            "",
        ]
    return out


def render_peak_markdown(data: dict[str, Any], link_dir: str | None) -> str:
    """The peak report (``--peak-report``) of a run's JSON form; ``link_dir``: the
    snapshot PNGs' folder relative to the report (``None``: no pictures)."""
    out = _header(
        "Gradient checkpointing: peak memory, largest batch and speed per family",
        data,
        _peak_method_md(data),
        "budgets",
    )
    entries = data.get("peak", [])
    if not entries:
        return "\n".join([*out, "No family measured.", ""])
    cap = data["args"]["mem_cap_gib"]
    out += ["## Verdict: the `default` setting against the targets", ""]
    rows = []
    for e in entries:
        d = next((s for s in e["settings"] if s["setting"] == "default"), None)
        v = e.get("verdict") or {"checks": [], "text": e.get("reason") or e["status"]}
        checks = {c["target"].split(" ")[0]: c for c in v["checks"]}

        def cell(key: str, checks: dict[str, Any] = checks) -> str:
            c = checks.get(key)
            if c is None:
                return "–"
            return ("✓ " if c["ok"] else "✗ " if c["ok"] is False else "") + c["text"]

        rows.append(
            [
                e["family"],
                e["backbone"],
                f"{_size_label(e['size'])} b{e['batch']}",
                (d or {}).get("plan_label", "–"),
                cell("largest"),
                cell("step"),
                cell("peak"),
                "**meets**" if v.get("meets") else v["text"] if v.get("meets") is False else "–",
            ]
        )
    out += [
        markdown_table(
            [
                "family",
                "backbone",
                "input",
                "default plan",
                f"largest batch (cap {cap:g} GiB)",
                "step time",
                "peak at fixed batch",
                "verdict",
            ],
            rows,
            align="llllllll",
        ),  # fmt: skip
        "",
    ]
    out += ["## Per family and setting", ""]
    rows = []
    for e in entries:
        if not e["settings"]:
            rows.append([e["family"], "–", "–", *["–"] * 12, f"{e['status']}: {e['reason']}"])
        for s in e["settings"]:
            ver = s.get("verified") or {}
            ok = s["status"] == "ok"
            rows.append(
                [
                    e["family"],
                    _setting_label(s),
                    s.get("plan_label", "–"),
                    fmt(s.get("step_ms"), 1),
                    _signed(s.get("overhead_pct")),
                    fmt(s.get("resident_mib"), 0),
                    fmt(s.get("peak_mib"), 0),
                    _signed(s.get("peak_change_pct")),
                    fmt(s.get("per_sample_mib"), 1),
                    fmt(s.get("predicted_max_batch")),
                    _x(s.get("predicted_gain")),
                    fmt(ver.get("max_batch"))
                    + (f" [{ver['reason']}]" if ver.get("reason") else ""),
                    _x(s.get("verified_gain")),
                    fmt(ver.get("images_per_s"), 0),
                    "ok" if ok else f"{s['status']}: {s['reason']}",
                    "; ".join(
                        n
                        for n in (
                            ""
                            if s.get("peak2_status", "ok") == "ok"
                            else f"2× batch: {s['peak2_status']}",
                            s.get("snapshot_error", ""),
                        )
                        if n
                    ),
                ]
            )
    out += [
        markdown_table(
            [
                "family",
                "setting",
                "plan",
                "step ms",
                "overhead %",
                "resident MiB",
                "peak MiB",
                "Δ peak %",
                "MiB/sample",
                "predicted max b",
                "×",
                "verified max b",
                "×",
                "img/s at own max",
                "status",
                "note",
            ],
            rows,
            align="lll" + "r" * 11 + "ll",
        ),  # fmt: skip
        "",
    ]
    snapped = [e for e in entries if e.get("snapshots")]
    if snapped:
        out += [
            "## What sets the peak (memory snapshots)",
            "",
            "One training step at the fixed batch under "
            "`torch.cuda.memory._record_memory_history(stacks='python')`; the blocks live "
            "at the step's peak, by category: inferred from the phase (markers at the "
            "forward, backward and optimizer phases and at every unit), the Python stack "
            "(`torch/utils/checkpoint.py` = recomputation; none in backward = autograd's "
            "engine), the gradients' addresses, bf16-copy sizes of the weights (autocast) "
            "and lifetime (freed before the next allocation = an op's scratch). The "
            "snapshot pickles open in https://pytorch.org/memory_viz.",
            "",
        ]
        for e in snapped:
            out += _snapshot_md(e, link_dir)
    out += [
        "## Proposed `FAMILY_DEFAULTS`",
        "",
        "```python",
        propose_budget_defaults(data),
        "```",
        "",
    ]
    if data["args"].get("json"):
        out += [f"Raw results: `{data['args']['json']}` (schema {SCHEMA_VERSION}).", ""]
    return "\n".join(out)
