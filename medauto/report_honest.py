"""The report's honest test results: what the test AUC/ACC rows hide.

For the search's final model (``final.json``) and for the first seed's retrained model
(``retrain.json``), the blocks of :func:`final_honest_blocks` and
:func:`retrain_honest_blocks` show the stored :class:`~medauto.evaluation.HonestEvaluation`:
the metrics with their bootstrap 95 % intervals, per-class sensitivity and specificity, the
test confusion matrix with class names, the warnings in bold, and the test ROC curve
(the ``roc.png`` written next to the results). Nothing here reads the test split or
computes a metric: the numbers were computed once, when the model was tested.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.evaluation import CI_METRICS
from medauto.evaluation import MAX_CI_WIDTH
from medauto.evaluation import MIN_CLASS_TEST
from medauto.evaluation import HonestEvaluation

if TYPE_CHECKING:
    from medauto.retrain import RetrainResult

__all__ = ["final_honest_blocks", "honest_blocks", "retrain_honest_blocks"]

Block = tuple[Any, ...]


def _f(v: Any) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def honest_blocks(evaluation: dict[str, Any], *, title: str, roc: Path | None,
                  image_name: str, images: dict[str, bytes]) -> list[Block]:
    """The blocks of one model's honest test results (``roc`` is added to ``images`` as
    ``image_name`` when the file exists)."""
    ev = HonestEvaluation.from_dict(evaluation)
    blocks: list[Block] = [("h3", title)]
    if ev.warnings:
        blocks.append(("list", [f"WARNING: {w}" for w in ev.warnings]))
    blocks.append(("table", ["metric", "test value", "95 % CI"],
                   [[k, _f(ev.metrics.get(k)), "[" + ", ".join(_f(v) for v in ev.ci[k]) + "]"]
                    for k in CI_METRICS if k in ev.ci]))
    blocks.append(("table", ["class", "test images", "sensitivity", "specificity"],
                   [[c["class"], c["n"], _f(c["sensitivity"]), _f(c["specificity"])]
                    for c in ev.per_class]))
    if ev.confusion:
        blocks.append(("table", ["true \\ predicted", *ev.class_names],
                       [[name, *row] for name, row in zip(ev.class_names, ev.confusion,
                                                          strict=True)]))
    blocks.append(("p", f"Intervals: {ev.n_bootstrap} bootstrap resamples of the {ev.n} test "
                        f"images (stratified by class, seed {ev.seed}), 2.5th-97.5th "
                        f"percentile. A test split is flagged as too small when its smallest "
                        f"class has fewer than {MIN_CLASS_TEST} images or the AUC interval "
                        f"is wider than {MAX_CI_WIDTH}."))
    if roc is not None and roc.is_file():
        images[image_name] = roc.read_bytes()
        blocks.append(("img", image_name, f"{title}: test ROC curve"))
    return blocks


def final_honest_blocks(final_json: Path, images: dict[str, bytes]) -> list[Block]:
    """The final model's honest test results (none when ``final.json`` has none)."""
    from medauto.final import FinalResult

    f = FinalResult.load(final_json)
    if not f.evaluation:
        return []
    roc = final_json.parent / f.roc if f.roc else None
    return honest_blocks(f.evaluation, title="Final model: honest test results", roc=roc,
                         image_name="final_roc.png", images=images)


def retrain_honest_blocks(result: RetrainResult, images: dict[str, bytes]) -> list[Block]:
    """The first seed's retrained model's honest test results (none for an older
    ``retrain.json``)."""
    if not result.evaluation:
        return []
    seed = result.seeds[0] if result.seeds else 0
    return honest_blocks(result.evaluation, title=f"Retrained model (seed {seed}): honest "
                         "test results", roc=Path(result.out_dir) / "roc.png",
                         image_name="retrain_roc.png", images=images)
