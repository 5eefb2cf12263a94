"""Small programs every llmos has, for smoke tests, benchmarks and demos."""

from __future__ import annotations

import time


def noop(ctx) -> None:
    """Do nothing and succeed."""


def sleep(ctx, seconds: float = 1.0, steps: int = 10) -> None:
    """Sleep for ``seconds``, reporting progress in ``steps`` steps; yields when asked."""
    steps = max(1, int(steps))
    for i in range(steps):
        if ctx.should_yield():
            ctx.log("asked to yield; stopping early")
            return
        time.sleep(seconds / steps)
        ctx.progress(i + 1, steps)


def echo(ctx, message: str = "hello from llmos") -> str:
    """Print ``message`` to the job's log and return it."""
    print(message, flush=True)
    return message


def allreduce(ctx, size: int = 1 << 20, rounds: int = 5, timeout_s: float = 300.0,
              backend: str = "auto") -> dict:
    """Check that a gang's ranks reach each other, as NCCL's tests do: every rank joins
    ``torch.distributed`` from the environment the gang gives it (``backend``: NCCL when
    it sees a GPU, else Gloo over TCP; or either by name), all-reduces ``size`` floats
    ``rounds`` times and checks the sum.
    Returns the world size, each rank's host, the sum and the bus bandwidth (GB/s). A job
    on one node is a world of one."""
    import os
    import socket
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world == 1:
        return {"world_size": 1, "hosts": [socket.gethostname()], "sum": 1.0}
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend must be auto, nccl or gloo, not {backend!r}")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    cuda = backend == "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))  # env://
    try:
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        data = torch.full((max(1, int(size)),), float(rank + 1), device=device)
        dist.all_reduce(data)  # the first one also sets the connections up
        expected = world * (world + 1) / 2
        if float(data[0]) != expected or float(data[-1]) != expected:
            raise RuntimeError(f"all-reduce gave {float(data[0])}, not {expected}")
        rounds = max(1, int(rounds))
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(rounds):
            dist.all_reduce(data)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / rounds
        hosts: list = [None] * world
        dist.all_gather_object(hosts, socket.gethostname())
    finally:
        dist.destroy_process_group()
    # nccl-tests' bus bandwidth: what each link carried, comparable across world sizes
    busbw = 2 * (world - 1) / world * data.numel() * data.element_size() / seconds / 1e9
    print(f"rank {rank} of {world} ({backend}): all-reduce of {data.numel()} floats in "
          f"{seconds * 1000:.1f} ms, bus bandwidth {busbw:.2f} GB/s", flush=True)
    return {"world_size": world, "rank": rank, "backend": backend, "hosts": hosts,
            "sum": expected, "seconds": seconds, "busbw_gbps": busbw}
