"""Distributed plumbing: the process group, collectives the trainer needs, a launcher.

:class:`DistContext` describes this process's place in a ``torch.distributed`` group
(rank, world size, local rank, backend). :meth:`DistContext.from_env` reads the variables
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and initialises the group: gloo on CPU, NCCL on CUDA. Without those
variables it returns a single-process context, so the same script runs with and without
``torchrun``. :func:`launch` starts ``nprocs`` processes from Python (spawn) with a free
port and calls ``fn(dist, *args)`` in each.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import queue
import socket
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from med_core.config import DDPConfig

__all__ = ["DistContext", "find_free_port", "launch"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a distributed group (a single process by default).

    Args:
        rank:
            Global rank of this process.
        world_size:
            Number of processes in the group.
        local_rank:
            Rank on this host (selects ``cuda:<local_rank>``).
        backend:
            ``"gloo"`` or ``"nccl"`` once a group is initialised; ``None`` for one process.

    Example:
        >>> d = DistContext()
        >>> d.is_distributed, d.is_main_process, d.broadcast_object({"a": 1})
        (False, True, {'a': 1})
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        backend: str | None = None,
        timeout_s: float = 1800.0,
    ) -> DistContext:
        """Builds the context from torchrun's environment variables and joins the group.

        Args:
            env:
                The environment to read (default: ``os.environ``).
            backend:
                ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
            timeout_s:
                Collective timeout in seconds.

        Returns:
            A single-process context when ``WORLD_SIZE`` is unset or 1.

        Raises:
            ValueError: inconsistent ``RANK``/``WORLD_SIZE`` values.
        """
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(env.get("RANK", "-1"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        if not 0 <= rank < world:
            raise ValueError(f"RANK must be in [0, WORLD_SIZE={world}), got {env.get('RANK')!r}")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not tdist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local)
            tdist.init_process_group(
                backend=backend,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        return cls(rank=rank, world_size=world, local_rank=local, backend=tdist.get_backend())

    # ------------------------------------------------------------------ properties
    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (which writes checkpoints and shows progress)."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """The device this rank uses: ``cuda`` becomes ``cuda:<local_rank>`` under DDP."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank if self.is_distributed else 0)
        return dev

    def _coll_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Waits for every rank (no-op in one process)."""
        if self.is_distributed:
            tdist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Returns ``src``'s ``obj`` on every rank (must be picklable)."""
        if not self.is_distributed:
            return obj
        box = [obj if self.rank == src else None]
        tdist.broadcast_object_list(box, src=src, device=self._coll_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over all ranks (float64)."""
        if not self.is_distributed:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self._coll_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def all_reduce_min_int(self, value: int) -> int:
        """The minimum of an integer over all ranks."""
        if not self.is_distributed:
            return int(value)
        t = torch.tensor([value], dtype=torch.int64, device=self._coll_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return int(t.item())

    def broadcast_buffers(self, module: torch.nn.Module, src: int = 0) -> None:
        """Copies ``src``'s buffers (e.g. BatchNorm running statistics) to every rank.

        Each rank trains its own statistics (:func:`wrap_ddp` turns DDP's per-step buffer
        broadcast off), so after the last training step every rank holds the statistics
        of its own batches; this makes the ranks identical again before evaluation and
        checkpointing. The buffers travel as one flat tensor per dtype: one collective
        for all running means and variances instead of one per buffer (a ResNet-50 has
        159 buffers).
        """
        if not self.is_distributed:
            return
        dev = self._coll_device()
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in module.buffers():
            by_dtype.setdefault(b.dtype, []).append(b)
        for buffers in by_dtype.values():
            flat = torch.cat([b.detach().reshape(-1).to(dev) for b in buffers])
            tdist.broadcast(flat, src=src)
            for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
                b.copy_(part.view(b.shape))

    def gather_eval(self, t: torch.Tensor) -> torch.Tensor:
        """Reassembles per-rank evaluation outputs into the full split, in sample order.

        Each rank holds the rows ``indices[rank::world_size]`` of the split (the eval
        sharding of :func:`med_core.data.build_loader`); shards may differ in length by
        one. The result has every row exactly once, in the original order, on every rank.
        """
        if not self.is_distributed:
            return t
        dev = self._coll_device()
        local = t.to(dev).contiguous()
        n = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        lengths = [int(s.item()) for s in sizes]
        longest = max(lengths)
        if local.shape[0] < longest:
            pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        tdist.all_gather(parts, local)
        total = sum(lengths)
        out = local.new_empty((total, *local.shape[1:]))
        for r, (part, n_r) in enumerate(zip(parts, lengths, strict=True)):
            out[r :: self.world_size] = part[:n_r]
        return out.to(t.device)

    def destroy(self) -> None:
        """Leaves the process group (if one was initialised)."""
        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _worker(
    local_rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    nprocs: int,
    port: int,
    backend: str | None,
    results: Any,
) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nprocs),
            "LOCAL_WORLD_SIZE": str(nprocs),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        # As torchrun does: N processes each using every core oversubscribe the CPU.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    dist = DistContext.from_env(backend=backend)
    try:
        out = fn(dist, *args)
        results.put((local_rank, pickle.dumps(out)))
    finally:
        dist.destroy()


def launch(
    fn: Callable[..., Any],
    nprocs: int,
    *,
    args: tuple[Any, ...] = (),
    backend: str | None = None,
    port: int | None = None,
) -> list[Any]:
    """Runs ``fn(dist, *args)`` in ``nprocs`` new processes forming one group.

    The processes are started with the ``spawn`` method, with torchrun's environment
    variables set (so :meth:`DistContext.from_env` works in them), on a free local port.
    ``fn`` must be importable by name (a module-level function) and its return value
    picklable.

    Args:
        fn:
            Called as ``fn(dist: DistContext, *args)`` on every rank.
        nprocs:
            Number of processes (one per GPU on CUDA).
        args:
            Extra positional arguments (picklable).
        backend:
            ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
        port:
            Rendezvous port; default a free one.

    Returns:
        The return values of ``fn``, in rank order.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank raised (the others are
            terminated); the message carries the rank's traceback.
        torch.multiprocessing.ProcessExitedException: a rank died without raising.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import start_processes

    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = port or find_free_port()
    _logger.info("launching %d processes (backend=%s, port=%d)", nprocs, backend or "auto", port)
    procs = start_processes(
        _worker,
        args=(fn, args, nprocs, port, backend, results),
        nprocs=nprocs,
        join=False,
        start_method="spawn",
    )
    collected: dict[int, Any] = {}

    def drain() -> None:
        while True:
            try:
                rank, payload = results.get_nowait()
            except queue.Empty:
                return
            collected[rank] = pickle.loads(payload)

    # Drain while joining: a child blocks on exit until its queued result is read.
    while not procs.join(timeout=0.2):
        drain()
    drain()
    while len(collected) < nprocs:  # results still in flight in the queue's pipe
        rank, payload = results.get(timeout=30)
        collected[rank] = pickle.loads(payload)
    return [collected[r] for r in range(nprocs)]


def wrap_ddp(
    model: torch.nn.Module, device: torch.device, options: DDPConfig | None = None
) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel`, set up for throughput.

    * ``broadcast_buffers=False``: DDP's default broadcasts every buffer (BatchNorm
      statistics) from rank 0 before *each* forward, a collective per step. Rank 0's
      statistics only ever depend on rank 0's batches either way, and the trainer
      broadcasts rank 0's buffers once per epoch before validation
      (:meth:`DistContext.broadcast_buffers`), so evaluation and checkpoints see the same
      statistics with one broadcast per epoch instead of one per step.
    * ``gradient_as_bucket_view=True``: gradients are views into the all-reduce buckets,
      which saves one copy of every gradient per step and the memory of a second copy.
    * ``options`` (the run's ``cfg.ddp``): the bucket size and ``static_graph``; see
      :class:`~med_core.config.DDPConfig`. Default: torch's defaults.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options = options if options is not None else DDPConfig()
    # torch >= 2.15 renames the per-forward part of broadcast_buffers (init sync is kept)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    no_sync: dict[str, Any] = {sync: False}
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        bucket_cap_mb=options.bucket_cap_mb,
        static_graph=options.static_graph,
        **no_sync,
    )
