"""The training loop: deterministic, preemptible, resumable, with live metrics.

Given the seed, everything is reproducible: the data order of each epoch comes from its
own generator (seed, epoch), dropout from torch's global generator, whose state every
checkpoint carries. A checkpoint (through ``ctx.checkpoint``) holds the trainable weights
(only the adapters and head for LoRA), optimizer / scheduler / scaler state, the random
states, the position in the epoch and the early-stopping state, so a run that yields at
any optimizer step and resumes ends exactly where an uninterrupted run ends.

Per step the loop does no host-device sync and writes no file: losses stay on the device
until ``log_every`` asks for them (that is also where a NaN is caught, with the exact
step it first appeared at). ``ctx.should_yield()`` is a flag read between steps.

The loop knows nothing about tasks or data formats: it gets examples, a collate function
and an evaluator (see ``api``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmos.train import state as ckpt_state
from llmos.train.encode import Batch, Example
from llmos.train.errors import TrainError, TrainingDiverged
from llmos.train.recipe import TrainRecipe
from llmos.train.runtime import Runtime
from llmos.train.tasks import forward_loss

FORMAT = "llmos.train/1"


@dataclass
class Position:
    """Where training is; everything here goes into a checkpoint's JSON state."""

    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of this epoch already consumed
    last_loss: float | None = None
    best: float | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    eval_step: int = -1
    eval_metrics: dict = field(default_factory=dict)


@dataclass
class LoopResult:
    yielded: bool
    steps: int
    total_steps: int
    final_loss: float | None
    eval_metrics: dict
    stopped_early: bool


class Trainer:
    def __init__(self, ctx, recipe: TrainRecipe, model, examples: list[Example],
                 collate: Callable[[list[Example]], Batch], runtime: Runtime,
                 evaluate: Callable[[object], dict] | None, fingerprint: str):
        self.ctx, self.recipe, self.model, self.rt = ctx, recipe, model, runtime
        self.examples, self.collate, self.evaluate = examples, collate, evaluate
        self.fingerprint = fingerprint
        self.total = recipe.total_steps(len(examples))
        self.per_epoch = recipe.steps_per_epoch(len(examples))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = _optimizer(recipe, model, runtime)
        self.sched = _scheduler(recipe, self.opt, self.total)
        self.pos = Position()
        self._losses: list = []  # device tensors not yet synced
        self._host_losses: list[float] = []  # synced, not yet reported
        self._samples = 0
        self._t0 = time.perf_counter()
        self._paused = 0.0  # seconds of evaluation and checkpointing since the last report
        self._lr = recipe.optimizer.lr

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> LoopResult:
        self._resume()
        self.model.train()
        pos, bs, accum = self.pos, self.recipe.batch_size, self.recipe.grad_accum_steps
        self._t0 = time.perf_counter()
        while pos.step < self.total and not pos.stopped_early:
            order = self._epoch_order(pos.epoch)
            batches = [order[i:i + bs] for i in range(0, len(order), bs)]
            while pos.micro < len(batches) and pos.step < self.total:
                window = batches[pos.micro:pos.micro + accum]
                self._losses.append(self._train_step(window))
                pos.micro += len(window)
                pos.step += 1
                if self._after_step():
                    return self._result(yielded=True)
                if pos.stopped_early:
                    break
            if pos.micro >= len(batches):
                pos.epoch, pos.micro = pos.epoch + 1, 0
        self._flush()
        if self.evaluate is not None and pos.eval_step != pos.step:
            self._eval()
        return self._result(yielded=False)

    def _epoch_order(self, epoch: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.recipe.seed * 100_003 + epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def loss(self, batch):
        """The summed loss of one batch (a subclass may train on another loss)."""
        return forward_loss(self.model, batch)

    def _train_step(self, window: list[list[int]]):
        import torch

        batches = [self.collate([self.examples[i] for i in idx]) for idx in window]
        count = sum(b.n_items for b in batches) or 1
        scaler, total = self.rt.scaler, None
        for batch in batches:
            batch = batch.to(self.rt.device)
            with self.rt.autocast():
                loss = self.loss(batch) / count
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            self._samples += batch.n_samples
        if self.recipe.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.recipe.max_grad_norm)
        if scaler is not None:
            scaler.step(self.opt)
            scaler.update()
        else:
            self.opt.step()
        self._lr = self.sched.get_last_lr()[0]
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return total

    def _after_step(self) -> bool:
        """Logging, evaluation, checkpoints; True when the job must yield now."""
        r, step = self.recipe, self.pos.step
        if step % r.log_every == 0:
            self._flush()
        if r.eval_every and step % r.eval_every == 0 and self.evaluate is not None:
            self._eval()
        if self.ctx.should_yield():
            self._flush()
            self._save()
            return True
        if r.checkpoint_every and step % r.checkpoint_every == 0:
            self._save()
        return False

    # -- reporting --------------------------------------------------------------------------

    def _sync(self) -> None:
        """Bring the pending losses to the host (one sync); stop on a NaN or infinity."""
        if not self._losses:
            return
        import torch

        losses = torch.stack(self._losses).float().tolist()
        first = self.pos.step - len(losses) + 1
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} at step {first + i}; lower the "
                                       "learning rate or check the data")
        self._host_losses.extend(losses)
        self._losses = []
        self.pos.last_loss = losses[-1]

    def _flush(self) -> None:
        """Report the losses, learning rate, throughput and progress since the last report."""
        self._sync()
        if not self._host_losses:
            return
        losses, step, ctx = self._host_losses, self.pos.step, self.ctx
        elapsed = max(time.perf_counter() - self._t0 - self._paused, 1e-9)
        ctx.metric("loss", sum(losses) / len(losses), step=step)
        ctx.metric("learning_rate", self._lr, step=step)
        ctx.metric("samples_per_second", self._samples / elapsed, step=step)
        ctx.progress(step, self.total, unit="steps", epoch=round(step / self.per_epoch, 3))
        self._host_losses, self._samples, self._paused = [], 0, 0.0
        self._t0 = time.perf_counter()

    def _eval(self) -> None:
        started = time.perf_counter()
        self.model.eval()
        try:
            metrics = self.evaluate(self.model)
        finally:
            self.model.train()
        pos = self.pos
        pos.eval_step, pos.eval_metrics = pos.step, metrics
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.ctx.metric(f"eval_{name}", value, step=pos.step)
        es = self.recipe.early_stopping
        if es is not None:
            value = metrics[es.metric.removeprefix("eval_")]
            better = pos.best is None or (value < pos.best - es.min_delta if es.mode == "min"
                                          else value > pos.best + es.min_delta)
            pos.best, pos.bad_evals = (value, 0) if better else (pos.best, pos.bad_evals + 1)
            if pos.bad_evals >= es.patience:
                pos.stopped_early = True
                self.ctx.log(f"early stopping at step {pos.step}: {es.metric} has not improved "
                             f"for {es.patience} evaluations (best {pos.best:.6g})")
        self._paused += time.perf_counter() - started

    def _result(self, yielded: bool) -> LoopResult:
        p = self.pos
        return LoopResult(yielded, p.step, self.total, p.last_loss, p.eval_metrics,
                          p.stopped_early)

    # -- checkpoints ------------------------------------------------------------------------

    def _save(self) -> None:
        from safetensors.torch import save_file

        started = time.perf_counter()
        self._sync()
        tensors: dict = {}
        state = {"format": FORMAT, "fingerprint": self.fingerprint,
                 "position": asdict(self.pos),
                 "optimizer": ckpt_state.pack(self.opt.state_dict(), tensors, "opt"),
                 "scheduler": ckpt_state.pack(self.sched.state_dict(), tensors, "sched"),
                 "scaler": ckpt_state.pack(self.rt.scaler.state_dict(), tensors, "scaler")
                 if self.rt.scaler is not None else None,
                 "rng": ckpt_state.rng_state(tensors)}
        staging = self.ctx.workdir / ".train-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            save_file(ckpt_state.trainable_state(self.model), staging / "weights.safetensors")
            save_file(tensors, staging / "trainer.safetensors")
            number = self.ctx.checkpoint.save(state, files={
                "weights.safetensors": staging / "weights.safetensors",
                "trainer.safetensors": staging / "trainer.safetensors"})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.ctx.log(f"checkpoint {number} saved at step {self.pos.step}")
        self._paused += time.perf_counter() - started

    def _resume(self) -> None:
        from safetensors.torch import load_file

        found = self.ctx.checkpoint.load()
        if found is None or found.state.get("format") != FORMAT:
            return
        st = found.state
        if st.get("fingerprint") != self.fingerprint:
            raise TrainError("this job's checkpoint was made with another recipe, model or "
                             "data; start a new job instead of resuming this one")
        try:
            ckpt_state.load_trainable(self.model, found.path("weights.safetensors"))
        except ValueError as e:
            raise TrainError(str(e)) from None
        tensors = load_file(found.path("trainer.safetensors"))
        self.opt.load_state_dict(ckpt_state.unpack(st["optimizer"], tensors))
        self.sched.load_state_dict(ckpt_state.unpack(st["scheduler"], tensors))
        if self.rt.scaler is not None and st["scaler"] is not None:
            self.rt.scaler.load_state_dict(ckpt_state.unpack(st["scaler"], tensors))
        ckpt_state.set_rng_state(st["rng"], tensors)
        self.pos = Position(**st["position"])
        self.ctx.log(f"resumed from checkpoint {found.step} at step {self.pos.step} of "
                     f"{self.total}")


def fingerprint(recipe: TrainRecipe, model_dir: Path, train: list[Example],
                val: list[Example]) -> str:
    """What must not change between an attempt and its resumption: the recipe, the base
    model (its config and weight files, wherever the folder is) and the encoded rows."""
    import numpy as np

    h = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode())
    h.update((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    for split in (train, val):
        h.update(str(len(split)).encode())
        for e in split:
            h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
            h.update(np.asarray(e.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _optimizer(recipe: TrainRecipe, model, runtime: Runtime):
    import torch

    o = recipe.optimizer
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    fused = runtime.device.type == "cuda"
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused or None)


def _scheduler(recipe: TrainRecipe, opt, total: int):
    from transformers import get_scheduler

    s = recipe.schedule
    warmup = s.warmup(total)
    name = "constant_with_warmup" if s.name == "constant" else s.name
    return get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
