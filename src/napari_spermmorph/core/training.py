"""Freeze-then-unfreeze training as a generator of typed updates.

Phase 1 trains CBAM + head with the backbone frozen (BatchNorm in eval mode). Because a frozen backbone is a
fixed function, its feature maps are computed once for a few augmented views and cached: phase 1 then costs
almost nothing. Phase 2 trains everything, backbone at a lower learning rate than the head, cosine decay.
Both phases stop early on validation macro-F1 and restore the best weights.

The generator form lets a napari worker, the CLI and tests drive the same loop: the caller reads progress from
the yielded updates and stops it with ``should_stop`` (checked between batches).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment_batch, mixup
from .datasets import stratified_split
from .evaluation import classification_metrics
from .inference import predict_logits, resolve_device
from .models import ModelSpec, SpermClassifierNet, build_model
from .preprocess import crops_to_tensor, normalise


@dataclass
class TrainConfig:
    spec: ModelSpec = field(default_factory=ModelSpec)
    pretrained: bool = True
    phase1_epochs: int = 25
    phase2_epochs: int = 20
    lr_phase1: float = 1e-3
    lr_phase2_head: float = 1e-3
    lr_phase2_backbone: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    patience: int = 6
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0 disables MixUp (phase 2 only)
    cache_views: int = 4  # augmented views cached for phase 1; 0 = run the frozen backbone every batch
    val_fraction: float = 0.15
    # Stochastic weight averaging: phase 2's last ``swa_epochs`` run at ``swa_lr_scale`` x its learning rates (the
    # cosine decay before them ends there) and their end-of-epoch weights are averaged. Needs no validation.
    swa_epochs: int = 0
    swa_lr_scale: float = 0.2
    # Phase 2 with the backbone's BatchNorm statistics kept from the start model (eval mode; its scale and shift still
    # train): batches of 16 mixed-up crops make noisy statistics.
    phase2_frozen_batchnorm: bool = False
    seed: int = 0
    device: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d


@dataclass
class PhaseStarted:
    phase: int
    epochs: int
    n_train: int
    n_val: int


@dataclass
class BatchDone:
    phase: int
    epoch: int
    batch: int
    n_batches: int
    loss: float


@dataclass
class EpochDone:
    phase: int
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_macro_f1: float
    is_best: bool
    seconds: float


@dataclass
class TrainingFinished:
    model: SpermClassifierNet
    history: list[dict]
    best: dict
    stopped: bool
    seconds: float


TrainUpdate = PhaseStarted | BatchDone | EpochDone | TrainingFinished


class _Best:
    """Keeps the best weights seen so far (by validation macro-F1, then loss) and counts patience.

    Patience counts from the best epoch of the current phase: phase 2 starts below phase 1's best while the
    unfrozen backbone adapts, and must not be stopped for that.
    """

    def __init__(self) -> None:
        self.key: tuple[float, float] | None = None
        self.phase_key: tuple[float, float] | None = None
        self.state: dict | None = None
        self.info: dict = {}
        self.since = 0

    def new_phase(self) -> None:
        self.phase_key, self.since = None, 0

    def offer(self, model: torch.nn.Module, f1: float, loss: float, info: dict) -> bool:
        key = (f1, -loss)
        if self.phase_key is None or key > self.phase_key:
            self.phase_key, self.since = key, 0
        else:
            self.since += 1
        if self.key is None or key > self.key:
            self.key, self.state, self.info = key, copy.deepcopy(model.state_dict()), info
            return True
        return False


def iter_training(
    train_images: Sequence[np.ndarray] | torch.Tensor,
    train_labels: np.ndarray,
    config: TrainConfig,
    val_images: Sequence[np.ndarray] | torch.Tensor | None = None,
    val_labels: np.ndarray | None = None,
    model: SpermClassifierNet | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[TrainUpdate]:
    """Train and yield updates; the last one is ``TrainingFinished`` with the best model restored.

    Images are crops (any size, gray or RGB) or an already-prepared (N, 3, S, S) tensor in [0, 1].
    Without validation images, a stratified ``val_fraction`` of the training set is held out. With
    ``val_fraction`` 0 nothing is held out: every epoch runs and the final weights are kept (the cosine schedule
    ends at zero), which suits tiny datasets, where early stopping on ~20 images picks epochs by noise.
    ``model`` continues training an existing network (fine-tuning); otherwise one is built from the config.
    """
    t_start = time.perf_counter()
    spec = model.spec if model is not None else config.spec
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = resolve_device(config.device)
    x = _as_tensor(train_images, spec.input_size)
    y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    if val_images is None and config.val_fraction <= 0:
        xv = yv = None
    elif val_images is None:
        tr, va = stratified_split(y.numpy(), config.val_fraction, config.seed)
        xv, yv = x[va], y[va]
        x, y = x[tr], y[tr]
    else:
        xv = _as_tensor(val_images, spec.input_size)
        yv = torch.as_tensor(np.asarray(val_labels), dtype=torch.long)
    if config.swa_epochs > 0 and xv is not None:
        raise ValueError("weight averaging (swa_epochs > 0) keeps no best epoch: train without validation")
    if not 0 <= config.swa_epochs < max(config.phase2_epochs, 1):
        raise ValueError(f"swa_epochs must be in [0, phase2_epochs), got {config.swa_epochs}")
    if config.swa_epochs > 0 and config.phase2_frozen_batchnorm:
        raise ValueError("weight averaging recomputes the BatchNorm statistics that phase2_frozen_batchnorm keeps")
    k = spec.num_classes
    if int(y.max()) >= k:
        raise ValueError(f"labels go up to {int(y.max())} but the model has {k} classes")
    if model is None:
        model = build_model(spec, pretrained=config.pretrained)
    model = model.to(device).to(memory_format=torch.channels_last)
    names = [str(i) for i in range(k)]
    history: list[dict] = []
    best = _Best()
    stopped = False

    def evaluate() -> tuple[float, float, float]:
        if xv is None:
            return math.nan, math.nan, math.nan
        probs = predict_logits(model, xv, device, batch_size=64)
        loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-8)), yv))
        m = classification_metrics(yv.numpy(), probs.argmax(1).numpy(), names)
        return loss, m["accuracy"], m["macro_f1"]

    phases = []
    if model.pretrained_backbone and config.phase1_epochs > 0:
        phases.append(1)
    if config.phase2_epochs > 0:
        phases.append(2)
    for phase in phases:
        epochs = config.phase1_epochs if phase == 1 else config.phase2_epochs
        yield PhaseStarted(phase, epochs, len(x), 0 if xv is None else len(xv))
        if phase == 1:
            runner = _phase1(model, x, y, config, device, gen)
        else:
            runner = _phase2(model, x, y, config, device, gen, from_scratch=not model.pretrained_backbone)
        best.new_phase()
        for epoch, epoch_iter in enumerate(runner(epochs)):
            t0 = time.perf_counter()
            losses, correct, seen = [], 0, 0
            for b, (loss, n_correct, n) in enumerate(epoch_iter):
                losses.append(loss)
                correct += n_correct
                seen += n
                yield BatchDone(phase, epoch, b, epoch_iter.n_batches, loss)
                if should_stop():
                    stopped = True
                    break
            if stopped:
                break
            vloss, vacc, vf1 = evaluate()
            info = {"phase": phase, "epoch": epoch, "val_loss": vloss, "val_acc": vacc, "val_macro_f1": vf1}
            is_best = xv is not None and best.offer(model, vf1, vloss, info)
            upd = EpochDone(phase, epoch, epochs, float(np.mean(losses)), correct / max(seen, 1),
                            vloss, vacc, vf1, is_best, time.perf_counter() - t0)
            history.append(asdict(upd))
            yield upd
            if best.since >= config.patience:
                break
        if stopped:
            break
        if best.state is not None:
            model.load_state_dict(best.state)
    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    chosen = best.info
    if xv is None and history:  # no validation: the final weights, named by their epoch
        chosen = {"phase": history[-1]["phase"], "epoch": history[-1]["epoch"], "final_weights": True}
    yield TrainingFinished(model, history, chosen, stopped, time.perf_counter() - t_start)


def train_classifier(*args, on_update: Callable[[TrainUpdate], None] | None = None, **kwargs) -> TrainingFinished:
    """Drive ``iter_training`` to the end; ``on_update`` sees every update."""
    final = None
    for upd in iter_training(*args, **kwargs):
        if on_update is not None:
            on_update(upd)
        final = upd
    assert isinstance(final, TrainingFinished)
    return final


def _as_tensor(images, size: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.float()
    return crops_to_tensor(images, size)


class _EpochIter:
    """An epoch's batches with a known length (for progress bars)."""

    def __init__(self, fn: Callable[[], Iterator[tuple[float, int, int]]], n_batches: int):
        self._fn, self.n_batches = fn, n_batches

    def __iter__(self):
        return self._fn()


def _set_frozen(model: SpermClassifierNet, frozen: bool) -> None:
    for p in model.features.parameters():
        p.requires_grad_(not frozen)


def _loss(logits: torch.Tensor, target: torch.Tensor, k: int, smoothing: float) -> torch.Tensor:
    if target.dtype == torch.long:
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    soft = target * (1 - smoothing) + smoothing / k
    return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()


def _phase1(model, x, y, cfg: TrainConfig, device, gen):
    """CBAM + head on a frozen backbone (eval-mode BN), from cached features of augmented views."""
    spec = model.spec
    _set_frozen(model, True)
    model.features.eval()
    views = max(cfg.cache_views, 0)
    cache = None
    if views:
        cache = torch.stack([_features(model, augment_batch(x, cfg.augment, gen), device) for _ in range(views)])
    params = list(model.cbam.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr_phase1, weight_decay=cfg.weight_decay)
    n = len(x)
    nb = (n + cfg.batch_size - 1) // cfg.batch_size

    def run(epochs: int):
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * nb, 1))
        for _ in range(epochs):
            def batches():
                model.cbam.train()
                model.head.train()
                perm = torch.randperm(n, generator=gen)
                for i in range(0, n, cfg.batch_size):
                    idx = perm[i : i + cfg.batch_size]
                    if cache is not None:
                        view = torch.randint(0, views, (len(idx),), generator=gen)
                        feats = cache[view, idx].to(device).float()
                    else:
                        xb = normalise(augment_batch(x[idx], cfg.augment, gen), spec.mean, spec.std)
                        with torch.no_grad():
                            feats = model.features(xb.to(device).contiguous(memory_format=torch.channels_last))
                    yb = y[idx].to(device)
                    logits = model.forward_head(feats)
                    loss = _loss(logits, yb, spec.num_classes, cfg.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    yield float(loss.detach()), int((logits.argmax(1) == yb).sum()), len(idx)
            yield _EpochIter(batches, nb)
        _set_frozen(model, False)
    return run


def _features(model, xb: torch.Tensor, device, batch: int = 64) -> torch.Tensor:
    spec = model.spec
    out = []
    with torch.inference_mode():
        for i in range(0, len(xb), batch):
            v = normalise(xb[i : i + batch], spec.mean, spec.std).to(device)
            out.append(model.features(v.contiguous(memory_format=torch.channels_last)).half().cpu())
    return torch.cat(out)


def _phase2(model, x, y, cfg: TrainConfig, device, gen, from_scratch: bool):
    """Everything trains; the backbone at a lower rate (a from-scratch net uses the phase-1 rate throughout)."""
    spec = model.spec
    _set_frozen(model, False)
    back, top = model.trainable_groups()
    if from_scratch:
        groups = [{"params": back + top, "lr": cfg.lr_phase1}]
    else:
        groups = [{"params": back, "lr": cfg.lr_phase2_backbone}, {"params": top, "lr": cfg.lr_phase2_head}]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    n = len(x)
    nb = (n + cfg.batch_size - 1) // cfg.batch_size
    k = spec.num_classes
    use_amp = device.type == "cuda"

    def run(epochs: int):
        swa = cfg.swa_epochs  # below epochs (checked by iter_training)
        if swa:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_to((epochs - swa) * nb, cfg.swa_lr_scale))
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * nb, 1))
        average = _WeightAverage(model) if swa else None
        for epoch in range(epochs):
            def batches(averaged: bool = average is not None and epoch >= epochs - swa):
                model.train()
                if cfg.phase2_frozen_batchnorm:
                    for m in _batchnorms(model.features):
                        m.eval()
                perm = torch.randperm(n, generator=gen)
                for i in range(0, n, cfg.batch_size):
                    idx = perm[i : i + cfg.batch_size]
                    if len(idx) < 2:
                        continue  # BatchNorm cannot train on a single sample
                    xb = normalise(augment_batch(x[idx], cfg.augment, gen), spec.mean, spec.std).to(device)
                    yb = y[idx].to(device)
                    target = yb
                    if cfg.mixup_alpha > 0:
                        xb, target = mixup(xb, F.one_hot(yb, k).float(), cfg.mixup_alpha, gen)
                    xb = xb.contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                        logits = model(xb)
                    loss = _loss(logits.float(), target, k, cfg.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    yield float(loss.detach()), int((logits.argmax(1) == yb).sum()), len(idx)
                if averaged:
                    average.add(model)
            yield _EpochIter(batches, nb)
        if average is not None and average.count:
            average.load_into(model)
            _recompute_batchnorm(model, x, cfg.batch_size, device)
    return run


def _cosine_to(steps: int, floor: float) -> Callable[[int], float]:
    """Learning-rate factor: cosine from 1 down to ``floor`` over ``steps``, then ``floor``."""
    def factor(step: int) -> float:
        t = min(step / steps, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


class _WeightAverage:
    """Running mean of a model's floating-point weights (SWA); BatchNorm statistics are recomputed after."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.mean = {k: torch.zeros_like(v) for k, v in model.state_dict().items() if v.is_floating_point()}

    def add(self, model: torch.nn.Module) -> None:
        self.count += 1
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k in self.mean:
                    self.mean[k] += (v.detach() - self.mean[k]) / self.count

    def load_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict({**model.state_dict(), **self.mean})


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _recompute_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch: int, device) -> None:
    """Averaged weights need their own BatchNorm statistics: one pass over the (unaugmented) training images."""
    norms = _batchnorms(model)
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    spec = model.spec
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = normalise(x[i : i + batch], spec.mean, spec.std).to(device)
            if len(xb) > 1:
                model(xb.contiguous(memory_format=torch.channels_last))
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.eval()


def checkpoint_meta(result: TrainingFinished, class_names: Sequence[str], config: TrainConfig,
                    crops: Sequence[np.ndarray] | None = None, **extra) -> dict:
    """Metadata saved with a trained model: how to rebuild it and how it was trained.

    ``crops``: the training crops, whose average colours are recorded so that classifying another lab's stain can
    be flagged (``Classifier.stain_distance``).
    """
    if crops is not None and len(crops):
        from .colour import colour_reference

        extra = {"colour_reference": colour_reference(crops).to_dict(), **extra}
    return {
        "spec": result.model.spec.to_dict(),
        "class_names": list(class_names),
        "train_config": config.to_dict(),
        "best_validation": result.best,
        "epochs_run": len(result.history),
        "stopped_early_by_user": result.stopped,
        **extra,
    }
