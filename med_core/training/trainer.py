"""The :class:`Trainer` facade (and :class:`History`, re-exported from ``_history.py``).

The trainer holds the state of one run and hands the work out: the epoch loops live in
``_loop.py``, optimizers and schedules in ``_optim.py``, the checkpoint layout, resume
checks and restore in ``_resume.py``, file I/O and RNG capture in ``_checkpoint.py``, and
the process-group plumbing in ``_distributed.py``; the state of one fit and its per-step
helpers (batch mixing, frames of a caught error, seeds) in ``_fit.py``; an epoch's progress
bar, stop-reason name and log line in ``_epoch_report.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import torch
from torch import nn

from med_core.config import TrainConfig
from med_core.exceptions import CheckpointError
from med_core.exceptions import ConfigError
from med_core.training import _checkpoint as ckpt_io
from med_core.training import _resume
from med_core.training._distributed import DistContext
from med_core.training._epoch_report import EpochBar
from med_core.training._epoch_report import log_epoch
from med_core.training._epoch_report import stop_reason
from med_core.training._fit import _clear_frames
from med_core.training._fit import _FitState
from med_core.training._fit import _mix
from med_core.training._fit import _seed_everything
from med_core.training._fit import _stream_seed
from med_core.training._history import History
from med_core.training._loop import EvalOutput
from med_core.training._loop import LoopSettings
from med_core.training._loop import TrainStep
from med_core.training._loop import evaluate_loader
from med_core.training._loop import train_epoch
from med_core.training._optim import build_optimizer
from med_core.training._optim import build_scheduler
from med_core.training.callbacks import Callback
from med_core.training.early_stopping import EarlyStopping
from med_core.training.metrics import compute_metrics

if TYPE_CHECKING:
    from med_core.data import MedicalDataset
    from med_core.training.distill import Distillation

__all__ = ["History", "Trainer"]

_logger = logging.getLogger(__name__)


class Trainer:
    """Trains one classifier on one dataset: the core of every AutoML trial.

    The constructor only stores its arguments; the dataset, model, loaders and optimizer
    are built when first needed (``fit``, ``evaluate``, ``predict`` or ``.model``).

    Args:
        cfg:
            Every hyperparameter of the run.
        dataset:
            Already loaded data; default ``med_core.data.load_dataset(cfg.data)``.
        device:
            ``"cpu"``, ``"cuda"`` or ``"cuda:k"``; under DDP ``"cuda"`` means
            ``cuda:<local_rank>``. AMP and the fused optimizers are used on CUDA only.
        callbacks:
            :class:`~med_core.training.Callback` instances, called in order. When
            ``cfg.early_stopping_patience`` is set and none of them is an
            :class:`~med_core.training.EarlyStopping`, one is appended.
        out_dir:
            Where ``last.pt`` (every epoch) and ``best.pt`` (best ``cfg.monitor``) go;
            ``None`` writes nothing.
        progress:
            tqdm bars: ``None`` shows them when stderr is a TTY, ``True`` always,
            ``False`` never; non-zero ranks never show them.
        dist:
            The process group (see :class:`~med_core.training.DistContext`); default a
            single process.
        distill:
            Train on a teacher's soft targets (:mod:`med_core.training.distill`).
        epoch_log_level:
            The level of the one line per epoch on the main process (other ranks log
            it at ``DEBUG``); a search logs its trials' epochs at ``logging.DEBUG``.
        log_prefix:
            Put before each epoch line, e.g. ``"trial 3: "``.

    Example:
        >>> from med_core.config import TrainConfig
        >>> t = Trainer(TrainConfig(epochs=1), progress=False)
        >>> t.epoch, t.is_main_process
        (0, True)
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        dataset: MedicalDataset | None = None,
        device: str | torch.device = "cpu",
        callbacks: Sequence[Callback] = (),
        out_dir: str | Path | None = None,
        progress: bool | None = None,
        dist: DistContext | None = None,
        distill: Distillation | None = None,
        epoch_log_level: int = logging.INFO,
        log_prefix: str = "",
    ) -> None:
        self.cfg = cfg
        self.epoch_log_level = epoch_log_level
        self.log_prefix = log_prefix
        self.dataset = dataset
        self.device = device
        self.callbacks = list(callbacks)
        self.out_dir = out_dir
        self.progress = progress
        self.dist = dist if dist is not None else DistContext()
        self.distill = distill
        self.history: History | None = None
        self._model: nn.Module | None = None
        self._epoch = 0
        self._stop_request: str | None = None
        self._state: _FitState | None = None

    # ------------------------------------------------------------------ properties
    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (and in a single process)."""
        return self.dist.is_main_process

    @property
    def epoch(self) -> int:
        """Number of completed epochs (the 0-based index of the next epoch)."""
        return self._epoch

    @property
    def model(self) -> nn.Module:
        """The classifier (unwrapped: no DDP, no ``torch.compile``); built on first access."""
        return self._ensure_model()

    @property
    def task(self) -> str:
        """The dataset's task type."""
        return self._ensure_dataset().info.task

    @property
    def torch_device(self) -> torch.device:
        """The device this rank trains on."""
        return self.dist.device(self.device)

    @property
    def stop_requested(self) -> str | None:
        """The reason of this epoch's stop request, if a callback made one."""
        return self._stop_request

    def request_stop(self, reason: str) -> None:
        """Asks fit() to stop after the current epoch (callbacks call this).

        Under DDP the ranks agree: rank 0's request wins, else the lowest rank's. The
        first request of an epoch is kept. ``history.stop_reason`` becomes
        ``"early_stopping"`` for that reason and ``"callback:<reason>"`` for any other.
        """
        if self._stop_request is None:
            self._stop_request = str(reason)

    # ------------------------------------------------------------------ building
    def _ensure_dataset(self) -> MedicalDataset:
        if self.dataset is None:
            from med_core.data import load_dataset

            self.dataset = load_dataset(self.cfg.data)
        return self.dataset

    def _ensure_model(self) -> nn.Module:
        if self._model is None:
            from med_core.models import build_classifier

            info = self._ensure_dataset().info
            # Weights depend on cfg.seed only, not on the caller's global RNG state. The
            # model is told the size it will really see (native size unless resized), so
            # backbones can apply their small-input surgery.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                model = build_classifier(
                    self.cfg.model,
                    num_classes=info.num_classes,
                    in_chans=info.in_chans,
                    img_size=self.cfg.data.img_size or info.image_size,
                )
            model = model.to(self.torch_device)
            if self.cfg.channels_last and info.spatial_dims == 2:
                model = model.to(memory_format=torch.channels_last)
            self._model = model
        return self._model

    def _settings(self) -> LoopSettings:
        cfg, info, dev = self.cfg, self._ensure_dataset().info, self.torch_device
        amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp_dtype]
        if amp is not None and dev.type != "cuda":
            _logger.info(
                "amp_dtype=%s is ignored on %s (autocast is used on CUDA only)", cfg.amp_dtype, dev
            )
            amp = None
        return LoopSettings(
            task=info.task,
            num_classes=info.num_classes,
            device=dev,
            amp_dtype=amp,
            channels_last=cfg.channels_last and info.spatial_dims == 2,
            label_smoothing=cfg.label_smoothing,
            grad_clip=cfg.optim.grad_clip,
            mixup_alpha=cfg.augment.mixup_alpha,
            cutmix_alpha=cfg.augment.cutmix_alpha,
            tta=cfg.tta,
        )

    def _per_rank_batch(self) -> int:
        ws = self.dist.world_size
        if self.cfg.batch_size % ws:
            _logger.warning(
                "batch_size=%d is not divisible by world_size=%d; each rank uses %d",
                self.cfg.batch_size,
                ws,
                self.cfg.batch_size // ws,
            )
        return max(1, self.cfg.batch_size // ws)

    def _loader(self, split: str, *, train: bool) -> Any:
        from med_core.data import build_loader

        ds, cfg = self._ensure_dataset(), self.cfg
        bs = self._per_rank_batch()
        return build_loader(
            ds.split(split),
            batch_size=bs if train else 2 * bs,
            train=train,
            device=self.torch_device,
            augment=cfg.augment if train else None,
            seed=cfg.seed,
            mode=cfg.data.loader,
            img_size=cfg.data.img_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=cfg.data.num_workers,
            spatial_dims=ds.info.spatial_dims,
        )

    def _build_fit_state(self) -> _FitState:
        cfg, dev = self.cfg, self.torch_device
        model = self._ensure_model()
        settings = self._settings()
        train_loader = self._loader("train", train=True)
        val_loader = self._loader("val", train=False)
        steps = len(train_loader)
        if steps == 0:
            raise ConfigError(
                f"batch_size: the training split ({len(self._ensure_dataset().train)} samples "
                f"over {self.dist.world_size} rank(s)) gives no full batch of "
                f"{self._per_rank_batch()}; lower batch_size"
            )
        optimizer = build_optimizer(model, cfg.optim, device_type=dev.type)
        scheduler = build_scheduler(optimizer, cfg.optim, epochs=cfg.epochs, steps_per_epoch=steps)
        scaler = (
            torch.amp.GradScaler("cuda")
            if settings.amp_dtype == torch.float16 and dev.type == "cuda"
            else None
        )
        net: nn.Module = model
        if self.dist.is_distributed:
            from med_core.training._distributed import wrap_ddp

            net = wrap_ddp(model, dev, cfg.ddp)
        train_module: nn.Module = (
            TrainStep(net, settings) if self.distill is None else self.distill.step(net, settings)
        )
        eval_module = model
        if cfg.compile:
            # One process on CUDA: forward + loss replay as CUDA graphs, which removes the
            # per-kernel launch cost that otherwise bounds small-image throughput. DDP's
            # gradient hooks cannot be captured, so DDP and CPU use the default mode.
            graphs = dev.type == "cuda" and not self.dist.is_distributed
            settings.cudagraphs = graphs
            train_module = torch.compile(  # type: ignore[assignment]
                train_module, mode="reduce-overhead" if graphs else None
            )
            eval_module = torch.compile(model)  # type: ignore[assignment]
        callbacks = list(self.callbacks)
        if cfg.early_stopping_patience is not None and not any(
            isinstance(c, EarlyStopping) for c in callbacks
        ):
            callbacks.append(
                EarlyStopping(
                    cfg.monitor, patience=cfg.early_stopping_patience, mode=cfg.monitor_mode
                )
            )
        mix_gen = torch.Generator(device=dev) if settings.mixing else None
        return _FitState(
            train_module=train_module,
            eval_module=eval_module,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            train_loader=train_loader,
            val_loader=val_loader,
            settings=settings,
            callbacks=callbacks,
            mix_generator=mix_gen,
            targets=None if self.distill is None else self.distill.prepare(
                self, train_loader, settings),
        )

    # ------------------------------------------------------------------ fit
    def fit(self, *, resume: bool | str | Path = False) -> History:
        """Trains for ``cfg.epochs`` epochs (or until a stop request); returns the history.

        Args:
            resume:
                ``False`` starts from the seed. ``True`` continues from
                ``out_dir/last.pt`` when it exists (else starts fresh); a path continues
                from that checkpoint. A resumed run continues exactly: model, optimizer,
                schedule, grad scaler, epoch, history, callback states and every RNG
                (torch, CUDA, NumPy, Python, per rank) are restored, so on CPU the final
                weights and metrics equal those of an uninterrupted run bit for bit. A
                checkpoint of a finished run (``completed`` or ``early_stopping``) returns
                its history without training.

        Returns:
            The :class:`History`. The trained weights stay in :attr:`model` (the last
            epoch's; the best epoch's are in ``out_dir/best.pt``).

        Raises:
            NonFiniteLossError: the training loss became NaN/inf (within
                ``_loop.CHECK_EVERY`` steps).
            CheckpointError: the resume checkpoint is missing, corrupt, unsafe, or was
                written for a different config.
            ConfigError: ``cfg.monitor`` names no metric, or no full training batch.
            torch.OutOfMemoryError, KeyboardInterrupt: propagate unchanged (after the
                callbacks' ``on_exception``).
        """
        cfg = self.cfg
        state: _FitState | None = None
        try:
            checkpoint = _resume.load_resume_checkpoint(self, resume)
            self._ensure_model()
            self._state = state = self._build_fit_state()
            if checkpoint is not None:
                _resume.restore(self, checkpoint, state)
                checkpoint = None  # free the host copy of the weights and optimizer state
            else:
                self._epoch = 0
                self.history = History(monitor=cfg.monitor, mode=cfg.monitor_mode)
                _seed_everything(cfg.seed + self.dist.rank)
            history = self.history
            if history is None:  # pragma: no cover - set by both branches above
                raise RuntimeError("internal error: no history after setup")
            if history.stop_reason in ("completed", "early_stopping"):
                _logger.info(
                    "checkpoint holds a finished run (%s); nothing to train", history.stop_reason
                )
                return history
            history.stop_reason = None
            self._stop_request = None
            for cb in state.callbacks:
                cb.on_fit_start(self)
            while self._epoch < cfg.epochs:
                self._run_epoch(state, history)
                if history.stop_reason is not None:
                    break
            for cb in state.callbacks:
                cb.on_fit_end(self, history)
            return history
        except BaseException as exc:
            for cb in state.callbacks if state is not None else self.callbacks:
                try:
                    cb.on_exception(self, exc)
                except Exception:
                    _logger.exception(
                        "%s.on_exception raised; the original error propagates", type(cb).__name__
                    )
            _clear_frames(exc.__traceback__)
            raise
        finally:
            self._state = None
            del state

    def _run_epoch(self, state: _FitState, history: History) -> None:
        cfg, dist = self.cfg, self.dist
        epoch = self._epoch
        for cb in state.callbacks:
            cb.on_epoch_start(self, epoch)
        t0 = time.perf_counter()
        state.train_loader.set_epoch(epoch)
        mix = None
        if state.mix_generator is not None:
            state.mix_generator.manual_seed(_stream_seed(cfg.seed, dist.rank, epoch))
            mix = functools.partial(
                _mix,
                multilabel=state.settings.task == "multi-label",
                num_classes=state.settings.num_classes,
                mixup_alpha=state.settings.mixup_alpha,
                cutmix_alpha=state.settings.cutmix_alpha,
                generator=state.mix_generator,
            )
        with EpochBar(self.progress, main_process=self.is_main_process,
                      desc=f"epoch {epoch + 1}/{cfg.epochs}", total=len(state.train_loader)) as bar:
            local_sum, local_count = train_epoch(
                state.train_module,
                state.train_loader,
                optimizer=state.optimizer,
                scheduler=state.scheduler,
                scaler=state.scaler,
                settings=state.settings,
                epoch=epoch,
                dist=dist,
                mix=mix,
                targets=state.targets,
                on_window=bar.on_window,
            )
            loss_sum, count = dist.all_reduce_sum([local_sum, local_count])
            train_time = time.perf_counter() - t0
            if dist.is_distributed:
                dist.broadcast_buffers(self.model)
            val = self._evaluate_with(state.eval_module, state.val_loader, state.settings, "val")
            metrics: dict[str, float] = {
                "epoch": epoch,
                "train_loss": loss_sum / max(count, 1),
                **val,
                "lr": float(state.optimizer.param_groups[0]["lr"]),
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": count / train_time if train_time > 0 else math.nan,
            }
            bar.finish(metrics["train_loss"], cfg.monitor, metrics.get(cfg.monitor, math.nan))
        self._epoch = epoch + 1
        history.epochs.append(metrics)
        for cb in state.callbacks:
            cb.on_epoch_end(self, epoch, metrics)
        if cfg.monitor not in metrics:
            raise ConfigError(
                f"monitor: must name an epoch metric, got {cfg.monitor!r}; "
                f"available: {sorted(metrics)}"
            )
        value = float(metrics[cfg.monitor])
        improved = history.is_better(value)
        if improved:
            history.best_epoch, history.best_metric = epoch, value
        history.stop_reason = stop_reason(self._agree_stop(), completed=self._epoch >= cfg.epochs)
        log_epoch(
            _logger,
            self.epoch_log_level if self.is_main_process else logging.DEBUG,  # one per epoch
            epoch,
            metrics,
            prefix=self.log_prefix,
            epochs=cfg.epochs,
            monitor=cfg.monitor,
            reason=history.stop_reason,
        )
        if self.out_dir is not None:
            _resume.save_epoch(self, state, history, improved=improved)

    def _agree_stop(self) -> str | None:
        reason, self._stop_request = self._stop_request, None
        if not self.dist.is_distributed:
            return reason
        reasons = self.dist.all_gather_object(reason)
        return next((r for r in reasons if r is not None), None)

    # ------------------------------------------------------------------ evaluation
    def _evaluate_with(
        self, module: nn.Module, loader: Any, settings: LoopSettings, prefix: str
    ) -> dict[str, float]:
        out = evaluate_loader(module, loader, settings=settings)
        y_true, y_score, loss_sum, n = self._gather(out)
        metrics = {f"{prefix}_loss": loss_sum / n if n else math.nan}
        if n == 0:
            _logger.warning("the %s split is empty; its metrics are NaN", prefix)
            values = dict.fromkeys(("auc", "acc", "balanced_acc", "macro_f1"), math.nan)
        else:
            values = compute_metrics(settings.task, y_true, y_score)
        metrics.update(
            {f"{prefix}_{k}": float(values[k]) for k in ("auc", "acc", "balanced_acc", "macro_f1")}
        )
        return metrics

    def _gather(self, out: EvalOutput) -> tuple[np.ndarray, np.ndarray, float, int]:
        dist = self.dist
        scores = dist.gather_eval(out.scores)
        labels = dist.gather_eval(out.labels)
        (loss_sum,) = dist.all_reduce_sum([float(out.loss_sum.item())])
        return labels.cpu().numpy(), scores.cpu().numpy(), loss_sum, int(labels.shape[0])

    def _check_split(self, split: str) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Loss and metrics of the current model on a whole split.

        Under DDP every rank must call it; each predicts its shard and the predictions
        are gathered, so the metrics cover the full split on every rank.

        Returns:
            ``{"<split>_loss", "<split>_auc", "<split>_acc", "<split>_balanced_acc",
            "<split>_macro_f1"}`` (see :func:`~med_core.training.compute_metrics`).
        """
        self._check_split(split)
        model = self._ensure_model()
        return self._evaluate_with(model, self._loader(split, train=False), self._settings(), split)

    def predict(
        self, split: str = "test", *, tta: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and scores of a whole split, in the split's sample order.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            tta: Average the probabilities over the image and its horizontal flip;
                ``None`` → ``cfg.tta``.

        Returns:
            ``(y_true, y_score)``: labels as stored; scores are the positive-class
            probability ``(N,)`` for binary tasks, softmax probabilities ``(N, C)`` for
            multi-class/ordinal, sigmoid probabilities ``(N, L)`` for multi-label.
        """
        self._check_split(split)
        model = self._ensure_model()
        settings = self._settings()
        if tta is not None:
            settings = dataclasses.replace(settings, tta=tta)
        out = evaluate_loader(model, self._loader(split, train=False), settings=settings)
        y_true, y_score, _, _ = self._gather(out)
        return y_true, y_score

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """Loads model weights from a ``best.pt`` or ``last.pt``; returns the checkpoint.

        Raises:
            CheckpointError: missing, corrupt or unsafe file, or weights that do not fit.
        """
        ckpt = ckpt_io.load_checkpoint(path)
        try:
            self._ensure_model().load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{str(path)!r} does not fit this model: {e}") from e
        return ckpt

    def close(self) -> None:
        """Drops the model, the dataset and any fit state so their memory can be freed.

        ``fit()`` already releases the optimizer, loaders and wrappers when it returns or
        raises; ``close()`` also releases the model. Call ``torch.cuda.empty_cache()``
        afterwards to hand cached blocks back to the driver.
        """
        self._state = None
        self._model = None
        self.dataset = None
