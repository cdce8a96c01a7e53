"""The SyDES training loop: pretrain (MIM + ITC + consistency + KL) and fine-tune (CE + ITC).

Recipe (../shared/SYDES.md): AdamW (0.9, 0.95), weight decay 0.01, per-module learning rates from the
model's parameter groups, linear warm-up (15% pretrain / 10% fine-tune) then cosine, gradient
accumulation, clipping, fp16 + GradScaler on CUDA (bf16 autocast on CPU on request), best checkpoint by dev
loss (pretrain) or dev macro-F1 (fine-tune), early stopping.

Output folder layout (`output`):
    metrics.jsonl          one JSON object per log / eval event (rank 0 only)
    last/                  checkpoint + training_state/ (written atomically every `save_every` steps)
    best/                  best checkpoint so far (no training state)
Rerunning the same command finds `last/training_state` and continues from that step; the result is the
same weights as an uninterrupted run (data order, RNG states, optimiser, scaler and schedule restored).

Distributed: under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
CPU, NCCL on CUDA); each rank reads its shard of a deterministic order; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdk.atomic import atomic_directory, atomic_write_text
from sdk.errors import CheckpointError, ConfigError
from training.data import PostDataset, Records, ResumableSampler, make_loader
from training.distributed import (  # noqa: F401  (re-exported: callers import them from here)
    Dist,
    _rng_state,
    _set_rng_state,
    init_distributed,
    resolve_device,
    set_seed,
)
from training.metrics import MetricsLog, evaluate_predictions, summary_row
from training.options import STAGES, TrainOptions  # noqa: F401  (re-exported: callers import them from here)
from training.schedule import set_lrs
from training.steps import (  # noqa: F401
    RECIPE_LRS,
    _LossForward,
    batch_logits,
    batch_losses,
    drop_text,
    optimizer_groups,
    prepare_model_for_stage,
    unwrap,
)

log = logging.getLogger(__name__)

STATE_DIR = "training_state"


# --- the trainer --------------------------------------------------------------------------------------
def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """Runs one stage. `model` is a SyDES; `train`/`dev` are Records; `tokenizer` an sdk Tokenizer."""

    def __init__(self, model: torch.nn.Module, train: Records, dev: Records | None, tokenizer, output: str | Path,
                 opts: TrainOptions, *, init_from: str | None = None) -> None:
        self.opts = opts.validate()
        self.output = Path(output)
        self.device = resolve_device(opts.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device)
        set_seed(opts.seed, opts.deterministic)
        self.model = model.to(self.device)
        self.cfg = model.config
        self.tasks = self.cfg.task_names
        self.tokenizer = tokenizer
        from sdk.preprocess import PreprocessConfig

        uses_images = getattr(model, "uses_images", True)  # the text-only family reads no image
        pcfg = PreprocessConfig.from_dict(self.cfg.preprocess) if uses_images else None
        use_cache = bool(opts.feature_cache) and uses_images
        # pretrain's masked tiles need the pixels
        pixels = uses_images and (not use_cache or opts.stage == "pretrain")
        self.train_ds = PostDataset(train, tokenizer, pcfg, self.tasks, with_pixels=pixels)
        self.dev_ds = PostDataset(dev, tokenizer, pcfg, self.tasks, with_pixels=pixels) if dev else None
        tokens = [(d.ids, d.mask) for d in (self.train_ds, self.dev_ds) if d is not None]
        self.cache = None
        if use_cache:
            from training.feature_cache import CachedFeatureDataset, FeatureCache

            self.cache = FeatureCache(opts.feature_cache, model, device=self.device,
                                      dtype=getattr(torch, opts.feature_cache_dtype),
                                      tail_blocks=opts.image_tail_blocks)
            self.cache.fill(train, pcfg, batch_size=opts.batch_size, progress=opts.progress and self.dist.main)
            if dev:
                self.cache.fill(dev, pcfg, batch_size=opts.batch_size, progress=opts.progress and self.dist.main)
            self.train_ds = CachedFeatureDataset(self.train_ds, self.cache, train)
            if self.dev_ds is not None:
                self.dev_ds = CachedFeatureDataset(self.dev_ds, self.cache, dev)
        if opts.text_cache:
            from training.feature_cache import CachedTextDataset, encode_texts

            hid = [encode_texts(self.model, ids, mask, batch_size=max(opts.batch_size, 32), device=self.device)
                   for ids, mask in tokens]
            self.train_ds = CachedTextDataset(self.train_ds, hid[0])
            if self.dev_ds is not None:
                self.dev_ds = CachedTextDataset(self.dev_ds, hid[1])
        prepare_model_for_stage(self.model, opts.stage, fresh_finetune=init_from is not None,
                                image_tail_blocks=opts.image_tail_blocks)
        self.sampler = ResumableSampler(len(self.train_ds), seed=opts.seed, shuffle=True, rank=self.dist.rank,
                                        world_size=self.dist.world)
        self.micro_per_epoch = math.ceil(self.sampler.per_rank() / opts.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / opts.accum)
        self.total_steps = self.steps_per_epoch * opts.epochs
        groups = optimizer_groups(self.model, opts.stage, opts.lrs)
        for g in groups:
            g["base_lr"] = g["lr"]
            g.setdefault("weight_decay", opts.weight_decay)
        # foreach=False: one code path whatever the device, so CPU runs are bit-reproducible
        self.optimizer = torch.optim.AdamW(groups, betas=opts.betas, weight_decay=opts.weight_decay,
                                           foreach=False)
        amp = opts.amp
        if amp == "auto":
            amp = "fp16" if self.device.type == "cuda" else "off"
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("fp16 mixed precision needs CUDA; on CPU use --amp bf16 or off")
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(_LossForward(self.model), device_ids=ids, find_unused_parameters=True)
        self.ema = None
        if opts.ema:
            from training.ema import WeightEMA

            self.ema = WeightEMA(unwrap(self.model), opts.ema)
        self.metrics = MetricsLog(self.output / "metrics.jsonl", self.dist.main)
        # progress state
        self.step = 0
        self.epoch = 0
        self.micro_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.best: float | None = None
        self.best_step = -1
        self.bad_evals = 0
        self.stopped_early = False

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def higher_is_better(self) -> bool:
        return self.opts.stage == "finetune"

    def _training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def _progress(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch,
                "sampler_seed": self.opts.seed, "world_size": self.dist.world, "best": self.best,
                "best_step": self.best_step, "bad_evals": self.bad_evals, "stage": self.opts.stage,
                "total_steps": self.total_steps, "stopped_early": self.stopped_early,
                "options": {k: v for k, v in asdict(self.opts).items() if k not in ("progress", "device")}}

    def save(self, name: str, with_state: bool) -> None:
        """Write `output/name` atomically (rank 0); every rank waits for it."""
        if self.dist.main:
            with atomic_directory(self.output / name, overwrite=True) as tmp:
                unwrap(self.model).save_pretrained(tmp, overwrite=True)
                self.tokenizer.save(tmp / "tokenizer.json")
                if with_state:
                    sd = tmp / STATE_DIR
                    sd.mkdir()
                    torch.save(self._training_state(), sd / "state.pt")
                    atomic_write_text(sd / "progress.json", json.dumps(self._progress(), indent=2))
        self.dist.barrier()

    def try_resume(self) -> bool:
        """Continue from `output/last/training_state` when it is there; returns True if it resumed."""
        last = self.output / "last"
        sd = last / STATE_DIR
        if not (sd / "progress.json").is_file():
            return False
        prog = json.loads((sd / "progress.json").read_text())
        if prog["stage"] != self.opts.stage or prog["world_size"] != self.dist.world:
            raise CheckpointError(
                f"{last} holds a {prog['stage']} run on {prog['world_size']} process(es); this is "
                f"{self.opts.stage} on {self.dist.world}: use another --output to start afresh")
        from safetensors.torch import load_file

        weights = load_file(str(last / "model.safetensors"), device="cpu")
        unwrap(self.model).load_state_dict(weights, strict=True)
        state = torch.load(sd / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        if self.ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{last} was trained without an EMA; this run has one: use another --output")
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch, self.micro_in_epoch = prog["step"], prog["epoch"], prog["micro_in_epoch"]
        self.best, self.best_step, self.bad_evals = prog["best"], prog["best_step"], prog["bad_evals"]
        self.stopped_early = prog.get("stopped_early", False)
        if self.dist.main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", last, self.step, self.epoch,
                     self.micro_in_epoch)
        return True

    # ---- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Dev loss (both stages) and, fine-tuning, per-task metrics. Runs on every rank over the whole dev
        set (simple and identical on all ranks); its randomness (MIM masks) is isolated from training's."""
        if self.dev_ds is None:
            return {}
        model = unwrap(self.model)
        was = model.training
        model.eval()
        loader = make_loader(self.dev_ds, batch_size=self.opts.batch_size, shuffle=False,
                             num_workers=self.opts.num_workers, trim=self.opts.trim_padding)
        losses: list[float] = []
        preds: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        trues: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.opts.seed + 12345)
            for batch in loader:
                batch = _to(batch, self.device)
                with self._autocast():
                    out = batch_losses(model, batch, self.opts.stage, self.opts.loss_weights or None)
                    losses.append(float(out["loss"]) * len(batch["labels"]))
                    if self.opts.stage == "finetune":
                        logits = batch_logits(model, batch)
                for i, t in enumerate(self.tasks):
                    trues[t].append(batch["labels"][:, i].cpu().numpy())
                    if self.opts.stage == "finetune":
                        preds[t].append(logits[t].float().argmax(-1).cpu().numpy())
        if was:
            self._train_mode()
        row: dict[str, Any] = {"dev_loss": sum(losses) / len(self.dev_ds)}
        if self.opts.stage == "finetune":
            reps = evaluate_predictions({t: np.concatenate(v) for t, v in trues.items()},
                                        {t: np.concatenate(v) for t, v in preds.items()}, self.cfg.tasks)
            row.update(summary_row(reps))
        return row

    def _train_mode(self) -> None:
        self.model.train()
        m = unwrap(self.model)
        # a frozen encoder runs as at inference (and as its cache)
        frozen_image = self.opts.stage == "finetune" or self.opts.lrs.get("image_encoder", None) == 0
        if frozen_image and hasattr(m, "image_encoder"):
            m.image_encoder.eval()
        if self.opts.lrs.get("text_encoder", None) == 0:
            m.text_encoder.eval()

    def _autocast(self):
        if self.amp == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _selected_weights(self):
        """The weights that are evaluated and saved as best: the EMA's when there is one."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def _eval_and_select(self) -> None:
        # with an EMA, the raw weights' scores are logged beside it (raw_*): what the average changed
        raw = {f"raw_{k}": v for k, v in self.evaluate().items()} if self.ema is not None else {}
        with self._selected_weights():
            row = self.evaluate()
            if not row:
                return
            row.update(raw)
            key = "macro_f1" if self.higher_is_better else "dev_loss"
            value = row[key]
            better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
            if better:
                self.best, self.best_step, self.bad_evals = value, self.step, 0
                self.save("best", with_state=False)
            else:
                self.bad_evals += 1
        self.metrics.write({"event": "eval", "step": self.step, "epoch": self.epoch, **row,
                            "best": self.best, "best_step": self.best_step})
        if self.dist.main:
            log.info("eval step %d: %s (best %s %.4f at step %d)", self.step,
                     ", ".join(f"{k} {v:.4f}" for k, v in row.items()), key, self.best, self.best_step)
        if self.opts.patience and self.bad_evals >= self.opts.patience:
            self.stopped_early = True

    # ---- the loop ------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, Any]]:
        self.sampler.set_epoch(self.epoch, start=self.micro_in_epoch * self.opts.batch_size)
        loader = make_loader(self.train_ds, batch_size=self.opts.batch_size, sampler=self.sampler,
                             seed=self.opts.seed + self.epoch, num_workers=self.opts.num_workers,
                             trim=self.opts.trim_padding)
        yield from loader

    def fit(self) -> dict[str, Any]:
        """Train to the end (or max_steps / early stop); returns a summary. Resumes when it can."""
        opts = self.opts
        resumed = self.try_resume()
        stop_at = self.total_steps if opts.max_steps is None else min(self.total_steps, opts.max_steps)
        if self.dist.main:
            self.metrics.write({"event": "start", "step": self.step, "resumed": resumed, "stage": opts.stage,
                                "total_steps": self.total_steps, "world_size": self.dist.world,
                                "device": str(self.device), "amp": self.amp, "train_size": len(self.train_ds)})
        self._train_mode()
        bar = None
        if opts.progress and self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop_at, initial=self.step, desc=opts.stage, unit="step", dynamic_ncols=True)
        t_last, samples_since, loss_acc, n_acc = time.perf_counter(), 0, 0.0, 0
        while self.epoch < opts.epochs and self.step < stop_at and not self.stopped_early:
            micro = self.micro_in_epoch
            pending = 0  # micro-batches accumulated into the current step
            group_size = min(opts.accum, self.micro_per_epoch - micro)
            for batch in self._batches():
                batch = drop_text(_to(batch, self.device), opts.text_dropout)
                set_lrs(self.optimizer, self.step, self.total_steps, opts.warmup_frac)
                sync = pending + 1 == group_size
                ctx = self.model.no_sync() if (self.dist.world > 1 and not sync) else contextlib.nullcontext()
                with ctx, self._autocast():
                    out = batch_losses(self.model, batch, opts.stage, opts.loss_weights or None)
                    loss = out["loss"] / group_size
                self.scaler.scale(loss).backward()
                pending += 1
                micro += 1
                samples_since += len(batch["labels"]) * self.dist.world
                loss_acc += float(out["loss"].detach())
                n_acc += 1
                if not sync:
                    continue
                self.scaler.unscale_(self.optimizer)
                gnorm = torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], opts.clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.ema is not None:
                    self.ema.update()
                pending = 0
                group_size = min(opts.accum, self.micro_per_epoch - micro)
                self.micro_in_epoch = micro
                if bar is not None:
                    bar.update(1)
                if self.step % opts.log_every == 0 or self.step == stop_at:
                    dt = time.perf_counter() - t_last
                    row = {"event": "train", "step": self.step, "epoch": self.epoch, "loss": loss_acc / n_acc,
                           "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": float(gnorm),
                           "samples_per_s": samples_since / max(dt, 1e-9)}
                    row.update({k: float(v.detach()) for k, v in out.items() if k != "loss"})
                    self.metrics.write(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.1f}")
                    t_last, samples_since, loss_acc, n_acc = time.perf_counter(), 0, 0.0, 0
                epoch_done = micro >= self.micro_per_epoch
                if opts.eval_every and self.step % opts.eval_every == 0 and not epoch_done:
                    self._eval_and_select()
                if epoch_done:
                    self.epoch += 1
                    self.micro_in_epoch = 0
                    self._eval_and_select()
                if epoch_done or self.step % opts.save_every == 0 or self.step >= stop_at or self.stopped_early:
                    self.save("last", with_state=True)
                if self.step >= stop_at or self.stopped_early or epoch_done:
                    break
        if bar is not None:
            bar.close()
        if self.best is None and self.dev_ds is None:  # no dev set: the last weights are the best we know
            with self._selected_weights():
                self.save("best", with_state=False)
        summary = {"event": "end", "step": self.step, "epoch": self.epoch, "best": self.best,
                   "best_step": self.best_step, "stopped_early": self.stopped_early}
        self.metrics.write(summary)
        self.metrics.close()
        return summary
