"""A self-contained Markdown + HTML report of a study (``medauto report``).

Sections: the study and its best trial (params and full config), the optimization
history and parameter importances (:func:`medauto.importance.param_importances`, the
values optuna-dashboard shows, plotted with matplotlib),
the test metrics of ``medauto retrain`` next to the published MedMNIST v2 baselines for the
dataset (:mod:`medauto.baselines`, with the citation), pruning statistics (epochs trained
vs. the epochs a search without pruning would have trained), quantization and deployment.

``report.md`` references the PNGs written next to it; ``report.html`` embeds them as
base64, so it is one file that can be mailed or attached to a ticket. Both are rendered
from the same list of blocks, so they always say the same thing.

Example:
    >>> import optuna
    >>> study = optuna.create_study()
    >>> pruning_statistics(study).trials
    0
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.importance import EVALUATOR_NAME
from medauto.importance import param_importances
from medauto.keys import BACKBONE_ATTR
from medauto.keys import CONFIG_ATTR
from medauto.keys import EPOCHS_RUN_ATTR
from medauto.logging import get_logger
from medauto.report_gallery import gallery_blocks
from medauto.report_honest import final_honest_blocks
from medauto.report_honest import retrain_honest_blocks
from medauto.study import load_settings_dict

if TYPE_CHECKING:
    import optuna

    from medauto.retrain import RetrainResult

__all__ = [
    "PruningStats",
    "ReportPaths",
    "pruning_statistics",
    "write_report",
]

_logger = get_logger(__name__)


# ------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class PruningStats:
    """Epochs a search trained vs. the epochs it would have trained without pruning.

    Attributes:
        trials: Trials counted (complete + pruned + failed; running ones are excluded).
        complete, pruned, failed, running: Trials by state.
        epochs_run: Sum over the counted trials of the epochs they trained.
        epochs_budget: Sum over the counted trials of their full budget (the trial's
            ``config.epochs``, i.e. the space's ``fidelity.max_epochs``): what a search
            that ran every trial to the end would have trained.
        epochs_saved: ``epochs_budget - epochs_run``.
        saved_fraction: ``epochs_saved / epochs_budget`` (NaN without trials).
        unknown_budget: Counted trials without a stored config (budget taken as run).
    """

    trials: int
    complete: int
    pruned: int
    failed: int
    running: int
    epochs_run: int
    epochs_budget: int
    epochs_saved: int
    saved_fraction: float
    unknown_budget: int = 0


def _epochs_run(t: optuna.trial.FrozenTrial) -> int:
    n = t.user_attrs.get(EPOCHS_RUN_ATTR)
    return int(n) if isinstance(n, int) else len(t.intermediate_values)


def pruning_statistics(study: optuna.Study) -> PruningStats:
    """Counts trials by state and sums the epochs they ran vs. their full budgets."""
    from optuna.trial import TrialState

    counted = {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    trials = study.get_trials(deepcopy=False)
    run = budget = unknown = 0
    for t in trials:
        if t.state not in counted:
            continue
        done = _epochs_run(t)
        cfg = t.user_attrs.get(CONFIG_ATTR)
        full = cfg.get("epochs") if isinstance(cfg, dict) else None
        if not isinstance(full, int):
            unknown += 1
            full = done
        run += done
        budget += max(full, done)
    n = sum(t.state in counted for t in trials)
    return PruningStats(
        trials=n,
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        epochs_run=run,
        epochs_budget=budget,
        epochs_saved=budget - run,
        saved_fraction=(budget - run) / budget if budget else math.nan,
        unknown_budget=unknown,
    )


# --------------------------------------------------------------------------- figures
def _figure(width: float = 6.4, height: float = 3.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _history_png(study: optuna.Study, metric: str) -> bytes | None:
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if not done and not pruned:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], s=22, color="tab:blue",
                   label="complete", zorder=3)
        best, xs, ys = None, [], []
        maximize = study.direction == StudyDirection.MAXIMIZE
        for t in sorted(done, key=lambda t: t.number):
            v = float(t.value)  # type: ignore[arg-type]
            if best is None or (v > best if maximize else v < best):
                best = v
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", s=22, color="0.55",
                   label="pruned (last reported)", zorder=2)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric or "objective")
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _importance_png(imp: dict[str, float]) -> bytes:
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig = _figure(6.4, 0.6 + 0.35 * len(items))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
    ax.set_xlabel(f"importance ({EVALUATOR_NAME})")
    ax.set_title("Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------ document & render
Block = tuple[Any, ...]


@dataclass(frozen=True)
class ReportPaths:
    """Files :func:`write_report` wrote."""

    markdown: Path
    html: Path
    images: tuple[Path, ...]


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif kind == "table":
            headers, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            out.append("| " + " | ".join("---" for _ in headers) + " |")
            out.extend("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows)
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "code":
            out.append(f"```{b[2]}\n{b[1].rstrip()}\n```")
        out.append("")
    return "\n".join(out)


_URL = re.compile(r"(https?://[^\s<]+[^\s<.,;)])")


def _inline(text: str) -> str:
    return _URL.sub(r'<a href="\1">\1</a>', html.escape(str(text)))


_CSS = (
    "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:960px;"
    "margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "table{border-collapse:collapse;margin:.6em 0}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}"
    "pre{background:#f6f8fa;padding:.8em;overflow-x:auto}img{max-width:100%}"
    "h1,h2{border-bottom:1px solid #eee}"
)


def _render_html(blocks: Sequence[Block], title: str, images: dict[str, bytes]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                for r in b[2]
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(images[b[1]]).decode("ascii")
            alt = html.escape(b[2])
            out.append(f'<p><img alt="{alt}" src="data:image/png;base64,{data}"></p>')
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(b[1])}</code></pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- sections
def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _pm(mean: float, std: float, n: int) -> str:
    return _f(mean) if n < 2 else f"{_f(mean)} ± {_f(std)}"


def _study_blocks(study: optuna.Study, settings: dict[str, Any]) -> list[Block]:
    from optuna.trial import TrialState

    from med_core.config import TrainConfig

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    space = settings.get("space", {}) if isinstance(settings.get("space"), dict) else {}
    blocks: list[Block] = [("table", ["setting", "value"], [
        ["study", study.study_name],
        ["data", settings.get("data", "?")],
        ["metric", f"{settings.get('metric', '?')} ({study.direction.name.lower()})"],
        ["search space", space.get("name", "?")],
        ["trials", ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"],
    ])]
    from medauto.exceptions import MedautoError
    from medauto.results import best_trial

    try:
        best = best_trial(study)  # the rule best, retrain and the dashboard use
    except MedautoError:
        return [*blocks, ("p", "No trial has completed yet, so there is no best trial.")]
    blocks += [("h2", "Best trial"),
               ("p", f"Trial {best.number}: {settings.get('metric', 'value')} = "
                     f"{_f(best.value, 4)} ({best.user_attrs.get(BACKBONE_ATTR, '?')}; epochs "
                     f"trained: {_epochs_run(best)}).")]
    if best.params:
        blocks.append(("table", ["parameter", "value"],
                       [[k, _param(v)] for k, v in sorted(best.params.items())]))
    cfg = best.user_attrs.get(CONFIG_ATTR)
    if isinstance(cfg, dict):
        try:
            text = TrainConfig.from_dict(cfg).to_yaml()
        except Exception:  # noqa: BLE001 - an old/foreign config is still worth showing
            import json

            text = json.dumps(cfg, indent=2)
        blocks += [("p", "Full training config of the best trial (`medauto best` prints it):"),
                   ("code", text, "yaml")]
    return blocks


def _param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _test_blocks(result: RetrainResult, dataset: str) -> list[Block]:
    from medauto.baselines import CITATION
    from medauto.baselines import DOI
    from medauto.baselines import best_baseline
    from medauto.baselines import dataset_key
    from medauto.baselines import get_baselines

    n = len(result.per_seed)
    m, s = result.test_mean, result.test_std
    what = (f"ensemble of the top {result.ensemble} trials {result.trials}"
            if result.ensemble > 1 else f"best trial {result.trials[0] if result.trials else '?'}")
    data = "train+val" if result.train_on_val else "train"
    blocks: list[Block] = [("p", (
        f"medauto retrained the {what} on {data} with seed(s) {result.seeds} "
        f"({result.weights} epoch weights) and evaluated each model once on the held-out test "
        f"split ({result.n_test} images) with MedMNIST's official metrics (ACC at 0.5 for "
        f"binary tasks, mean one-vs-rest AUC for multi-class). "
        + (f"Mean ± sample std over {n} seeds." if n > 1 else "One seed: no spread reported.")
    ))]
    rows = [[f"medauto ({result.study})", _pm(m.get("auc", math.nan), s.get("auc", 0.0), n),
             _pm(m.get("acc", math.nan), s.get("acc", 0.0), n), "this report"]]
    baselines = get_baselines(dataset)
    rows += [[r.method, _f(r.auc), _f(r.acc), "MedMNIST v2 (published)"] for r in baselines]
    blocks.append(("table", ["method", "test AUC", "test ACC", "source"], rows))
    if baselines:
        notes = []
        for metric in ("auc", "acc"):
            top = best_baseline(dataset, metric)
            if top is not None and math.isfinite(m.get(metric, math.nan)):
                diff = m[metric] - getattr(top, metric)
                notes.append(f"{metric.upper()}: {diff:+.3f} vs. the best published row "
                             f"({top.method}, {_f(getattr(top, metric))})")
        blocks.append(("list", notes))
        key = dataset_key(dataset)
        if key != Path(str(dataset)).stem.lower():
            blocks.append(("p", f"Published numbers are for {key} at 28 px (the 224 rows "
                                "resize those images); this study used " + str(dataset) + "."))
        blocks.append(("p", f"Baselines: {CITATION} {DOI}"))
    else:
        blocks.append(("p", f"medauto.baselines has no verified published MedMNIST v2 numbers "
                            f"for {dataset!r}, so there is nothing to compare against."))
    if n > 1 or result.ensemble > 1:
        blocks += [("h3", "Per seed"), ("table", ["seed", "test AUC", "test ACC", "models"],
                    [[r.seed, _f(r.test["auc"]), _f(r.test["acc"]), ", ".join(r.members)]
                     for r in result.per_seed])]
    blocks += [("h3", "Retrained models"), ("table",
                ["model", "backbone", "kept epoch", "test AUC", "test ACC", "train s", "file"],
                [[x.name, x.backbone, f"{x.weights} ({x.epoch + 1}/{x.epochs_run})",
                  _f(x.test["auc"]), _f(x.test["acc"]), _f(x.train_seconds, 1), x.path]
                 for x in result.models])]
    return blocks


def _final_blocks(path: Path) -> list[Block]:
    """The final ensemble of the search (``final.json``)."""
    from medauto.final import FinalResult

    f = FinalResult.load(path)
    where = "out-of-fold" if f.selection == "oof" else "validation"
    rows = [["ensemble", _f(f.test.get("auc")), _f(f.test.get("acc")),
             _f(f.test.get("balanced_acc")), f"{f.size_bytes.get('ensemble', 0) / 1e6:.1f}",
             _f(f.latency_ms.get("ensemble"), 2)],
            ["best single trial", _f(f.test_single.get("auc")), _f(f.test_single.get("acc")),
             _f(f.test_single.get("balanced_acc")),
             f"{f.size_bytes.get('single', 0) / 1e6:.1f}", _f(f.latency_ms.get("single"), 2)]]
    out: list[Block] = [
        ("h2", "Final model"),
        ("p", f"A greedy ensemble of {len(f.members)} trial(s), chosen from "
              f"{len(f.candidates)} candidate(s) and given its decision threshold "
              f"({f.threshold}) on {where} predictions only; then tested once on "
              f"{f.n_test} test images."),
        ("table", ["model", "test AUC", "test ACC", "balanced ACC", "MB",
                   f"ms/image ({f.device})"], rows),
        ("table", ["trial", "backbone", "weight", "models"],
         [[str(m["trial"]), m["backbone"], _f(m["weight"]), str(m["models"])]
          for m in f.members]),
    ]
    if f.confusion:
        out.append(("table", ["true / predicted", *map(str, range(len(f.confusion)))],
                    [[str(i), *map(str, row)] for i, row in enumerate(f.confusion)]))
    return out


def _deploy_blocks(folder: Path) -> list[Block]:
    """The deployment table (``deploy.json`` of :mod:`medauto.deploy`), when measured."""
    from medauto.deploy import DEPLOY_FILE
    from medauto.deploy import deploy_table
    from medauto.deploy import load_rows

    if not (folder / DEPLOY_FILE).is_file():
        return []
    return [("h2", "Deployment"), ("table", *deploy_table(load_rows(folder / DEPLOY_FILE))),
            ("p", "End to end (uint8 images in, scores out), median ms per call; see "
                  "docs/benchmarks/deploy.md for how it is measured.")]


def _pruning_blocks(st: PruningStats) -> list[Block]:
    blocks: list[Block] = [("table", ["", "value"], [
        ["trials counted (complete / pruned / failed)",
         f"{st.trials} ({st.complete} / {st.pruned} / {st.failed})"],
        ["epochs trained", st.epochs_run],
        ["epochs without pruning (each trial to its max_epochs)", st.epochs_budget],
        ["epochs saved by pruning",
         f"{st.epochs_saved} ({_f(100 * st.saved_fraction, 1)} %)"
         if st.epochs_budget else "n/a"],
    ])]
    notes = []
    if st.running:
        notes.append(f"{st.running} running trial(s) are not counted.")
    if st.unknown_budget:
        notes.append(f"{st.unknown_budget} trial(s) have no stored config; their budget is "
                     "taken as the epochs they ran.")
    if notes:
        blocks.append(("p", " ".join(notes)))
    return blocks


def _quant_blocks(q: Any) -> list[Block]:
    if q.error:
        return [("p", f"Quantization ({q.method}) of {q.model} failed: {q.error}")]
    comp = q.compiled
    headers = ["model", "file size (MB)", "test AUC", "test ACC", "CPU latency eager (ms)"]
    if comp:
        headers.append("CPU latency compiled (ms)")
    rows = []
    for label, size, test, lat, clat in (
        ("float32", q.float_size_bytes, q.float_test, q.float_latency_ms,
         q.float_latency_compiled_ms),
        (f"int8 ({q.method})", q.int8_size_bytes, q.int8_test, q.int8_latency_ms,
         q.int8_latency_compiled_ms),
    ):
        row = [label, _f(size / 1e6, 2), _f(test.get("auc")), _f(test.get("acc")), _f(lat, 2)]
        if comp:
            row.append(_f(clat, 2))
        rows.append(row)
    text = (f"Model {q.model}: {q.size_ratio:.2f}x smaller on disk; test ACC change "
            f"{-q.acc_drop_points:+.1f} points. Calibration: {q.calibration_batches} training "
            f"batch(es). Latency: median per batch of {q.latency_batch_size} test images, "
            f"{q.latency_threads or 'default'} CPU thread(s).")
    if not comp:
        text += (" Eager int8 runs torchao's reference graph (slower than float32); the fast "
                 "int8 kernels need compilation (`medauto retrain --latency-compile`).")
    if q.compile_error:
        text += f" Compilation failed: {q.compile_error}."
    return [("table", headers, rows), ("p", text)]


# ------------------------------------------------------------------------------ entry
def write_report(
    study: optuna.Study,
    *,
    out_dir: str | Path,
    retrain: str | Path | RetrainResult | None = None,
    title: str | None = None,
    final: str | Path | None = None,
) -> ReportPaths:
    """Writes ``report.md``, ``report.html`` and the PNGs into ``out_dir``.

    Args:
        study: A study created by medauto.
        out_dir: Output folder (created).
        retrain: A ``retrain.json`` path or :class:`~medauto.retrain.RetrainResult`; without
            it the report has no test metrics and no quantization table.
        final: The search's ``final.json`` (:mod:`medauto.final`): adds the final
            ensemble's section (members, selection scores, test metrics read once, size
            and latency next to the best single trial).
        title: Report title (default: ``"medauto report: <study>"``).

    Returns:
        The :class:`ReportPaths`.

    Raises:
        MedautoError: ``retrain`` cannot be read.
    """
    from medauto import __version__
    from medauto.retrain import RetrainResult

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = RetrainResult.load(retrain) if isinstance(retrain, (str, Path)) else retrain
    settings = load_settings_dict(study)
    title = title or f"medauto report: {study.study_name}"
    images: dict[str, bytes] = {}
    blocks: list[Block] = [("h1", title), *_study_blocks(study, settings)]

    blocks.append(("h2", "Optimization history"))
    hist = _history_png(study, str(settings.get("metric", "")))
    if hist is None:
        blocks.append(("p", "No finished trial to plot."))
    else:
        images["history.png"] = hist
        blocks.append(("img", "history.png", "optimization history"))

    blocks.append(("h2", "Parameter importances"))
    imp, note = param_importances(study)
    if imp:
        images["importance.png"] = _importance_png(imp)
        blocks += [("img", "importance.png", "parameter importances"),
                   ("table", ["parameter", "importance"],
                    [[k, _f(v)] for k, v in sorted(imp.items(), key=lambda kv: -kv[1])])]
    if note:
        blocks.append(("p", note))

    if final is not None and Path(final).is_file():
        blocks += _final_blocks(Path(final))
        blocks += final_honest_blocks(Path(final), images)
        blocks += _deploy_blocks(Path(final).parent)

    blocks.append(("h2", "Test metrics vs. published MedMNIST v2 baselines"))
    if result is None:
        blocks.append(("p", "No retrain results: run `medauto retrain --study "
                            f"{study.study_name}` to evaluate on the test split."))
    else:
        blocks += _test_blocks(result, result.dataset or str(settings.get("data", "")))
        blocks += retrain_honest_blocks(result, images)
        blocks += gallery_blocks(result, images)

    blocks += [("h2", "Pruning statistics"), *_pruning_blocks(pruning_statistics(study))]

    blocks.append(("h2", "Quantization"))
    if result is None or result.quantization is None:
        blocks.append(("p", "Not quantized (`medauto retrain --quantize static`)."))
    else:
        blocks += _quant_blocks(result.quantization)

    blocks.append(("p", f"Generated by medauto {__version__} on "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}."))
    written = []
    for name, data in images.items():
        (out / name).write_bytes(data)
        written.append(out / name)
    md, page = out / "report.md", out / "report.html"
    md.write_text(_render_markdown(blocks))
    page.write_text(_render_html(blocks, title, images))
    _logger.info("report written to %s and %s", md, page)
    return ReportPaths(markdown=md, html=page, images=tuple(written))
