"""Fine-tune a classifier on annotated heads: start model -> new head if needed -> core trainer -> checkpoint.

The start is a shipped model's name, a checkpoint path, or ``IMAGENET`` (the offline EfficientNet-Lite0
ImageNet backbone with a fresh CBAM and head). New class names get a new linear head; rows of classes whose
names the start model already knows are copied over, so a re-ordered or extended scheme loses nothing.

Everything that can fail for a reason the user can fix (output folder, disk space, class names) is checked
before training starts; the checkpoint is written atomically at the end, so a crash or a Stop never leaves a
half file and never touches the previous model. On Stop the best epoch so far is what gets saved.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import TrainingSet
from .crops import DEFAULT_HEAD_FRACTION

IMAGENET = "imagenet:tf_efficientnet_lite0"
IMAGENET_LABEL = "ImageNet backbone (EfficientNet-Lite0)"


class FineTuneError(ValueError):
    """Fine-tuning cannot start or its result cannot be saved; the message says why and what to do."""


@dataclass
class StartInfo:
    """What a start model implies for the training set, read from metadata only (no weights loaded)."""

    source: str
    class_names: list[str]  # the start model's classes; empty for the ImageNet backbone
    input_size: int
    head_fraction: float
    name: str


@dataclass
class FineTuneResult:
    path: Path | None  # None when stopped before the first epoch ended (nothing worth saving)
    meta: dict
    stopped: bool
    history: list[dict]
    best: dict
    seconds: float
    message: str
    reused_head_rows: list[str] = field(default_factory=list)


def start_sources() -> list[str]:
    """Shipped model names, then the ImageNet backbone."""
    from .registry import shipped_models

    return [m["name"] for m in shipped_models()] + [IMAGENET]


def start_info(source: str | Path, input_size: int = 128,
               default_head_fraction: float = DEFAULT_HEAD_FRACTION) -> StartInfo:
    """Class names, input size and head fraction of a start model (cheap: reads the checkpoint header)."""
    if str(source) == IMAGENET:
        return StartInfo(IMAGENET, [], int(input_size), float(default_head_fraction), "imagenet-lite0")
    from .checkpoints import CheckpointError, read_metadata
    from .registry import resolve

    try:
        meta = read_metadata(resolve(source, verify=False))
    except CheckpointError as exc:
        raise FineTuneError(str(exc)) from exc
    return StartInfo(str(source), list(meta["class_names"]), int(meta["spec"]["input_size"]),
                     float(meta.get("head_fraction", default_head_fraction)),
                     str(meta.get("name", Path(str(source)).stem)))


def load_start_model(source: str | Path, class_names: Sequence[str], input_size: int = 128,
                     pretrained: bool = True, member: int = 0, seed: int = 0):
    """(model, StartInfo, names of classes whose head rows were kept) with a head for ``class_names``.

    An ensemble checkpoint starts from one member (``member``, the first by default): fine-tuning trains one network.
    New layers (a new head, ImageNet's CBAM) are initialised from ``seed``, not from whatever the process drew
    before, so a seeded fine-tune repeats exactly.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _load_start_model(source, class_names, input_size, pretrained, member)


def _load_start_model(source: str | Path, class_names: Sequence[str], input_size: int, pretrained: bool,
                      member: int):
    """``load_start_model`` without the seeding."""
    from .models import ModelSpec, SeedEnsemble, build_model, default_normalisation

    names = list(class_names)
    if str(source) == IMAGENET:
        if member:
            raise FineTuneError(f"ImageNet is one network: no member {member}")
        mean, std = default_normalisation("tf_efficientnet_lite0")
        spec = ModelSpec(num_classes=len(names), input_size=int(input_size), mean=mean, std=std)
        return build_model(spec, pretrained=pretrained), start_info(IMAGENET, input_size), []
    from .checkpoints import CheckpointError, load_checkpoint
    from .registry import resolve

    try:
        path = resolve(source)
        state, meta = load_checkpoint(path)
        model = build_model(ModelSpec.from_dict(meta["spec"]), pretrained=False)
        model.load_state_dict(state, strict=True)
    except (CheckpointError, RuntimeError, KeyError) as exc:
        raise FineTuneError(f"The start model {source} cannot be loaded: {exc}") from exc
    members = list(model.members) if isinstance(model, SeedEnsemble) else [model]
    if not 0 <= member < len(members):
        raise FineTuneError(f"The start model {source} has {len(members)} member(s): no member {member}")
    model = members[member]  # fine-tuning trains one network
    info = start_info(source)
    kept = adapt_head(model, info.class_names, names)
    return model, info, kept


def adapt_head(model, old_names: Sequence[str], new_names: Sequence[str]) -> list[str]:
    """Give ``model`` a head for ``new_names``, copying rows of names it already had (returned)."""
    import torch

    old, new = list(old_names), list(new_names)
    if old == new:
        return new
    lin = model.head[-1]
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    model.replace_classes(len(new))
    kept = [n for n in new if n in old]
    with torch.no_grad():
        for n in kept:
            model.head[-1].weight[new.index(n)] = w[old.index(n)]
            model.head[-1].bias[new.index(n)] = b[old.index(n)]
    return kept


def checkpoint_bytes(model) -> int:
    """Size of the saved checkpoint (fp16 floats) plus a margin for the header."""
    state = model.state_dict().values()
    n = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in state)
    return int(n) + (1 << 20)


def output_path(folder: str | Path, name: str, needed_bytes: int = 32 << 20) -> Path:
    """Check that ``folder`` is writable with room for the checkpoint; returns a path that overwrites nothing.

    A temp file is really written (permissions, read-only mounts and quotas all show up that way).
    """
    if not str(name).strip():
        raise FineTuneError("Give the new model a name.")
    bad = set(name) & set('/\\:*?"<>|')
    if bad:
        raise FineTuneError(f"The model name {name!r} has characters not allowed in a file name: "
                            f"{sorted(bad)}")
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".spermmorph-write-test-") as fh:
            fh.write(b"\0" * 1024)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise FineTuneError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}); "
                            "choose another folder.") from exc
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise FineTuneError(f"Not enough disk space in {folder}: {free / 1e6:.1f} MB free, the checkpoint "
                            f"needs about {needed_bytes / 1e6:.1f} MB.")
    path = folder / f"{name}.safetensors"
    i = 2
    while path.exists():
        path = folder / f"{name}-{i}.safetensors"
        i += 1
    return path


def device_memory_allocated(device) -> int:
    """Bytes held by live tensors on a CUDA device (0 elsewhere: CPU memory goes back with the objects)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.memory_allocated())
    return 0


def free_device_memory(device, baseline: int | None = None) -> None:
    """Return cached accelerator memory once the training objects are gone.

    A full ``gc.collect()`` costs 0.5 s+ of frozen GUI in a napari process (it holds the GIL), so it runs only
    when tensors beyond ``baseline`` (the allocation before training) are still alive, i.e. held by a cycle.
    """
    import torch

    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        if baseline is not None and torch.cuda.memory_allocated() > baseline:
            gc.collect()
        torch.cuda.empty_cache()
    elif dev.startswith("mps") and hasattr(torch, "mps"):
        gc.collect()
        torch.mps.empty_cache()


def iter_finetune(
    training_set: TrainingSet,
    source: str | Path,
    out_folder: str | Path,
    name: str,
    config,
    should_stop: Callable[[], bool] = lambda: False,
    pretrained: bool = True,
    extra_meta: dict | None = None,
) -> Iterator:
    """Yield the trainer's updates, then one ``FineTuneResult`` (checkpoint saved, device memory freed).

    ``config`` is a ``training.TrainConfig``; its ``spec`` is ignored (the start model defines the network).
    Raises ``FineTuneError`` before any training when the start model or the output folder is unusable.
    """
    from .inference import resolve_device
    from .training import TrainingFinished, iter_training

    t0 = time.perf_counter()
    device = resolve_device(config.device)
    baseline = device_memory_allocated(device)
    model, info, kept = load_start_model(source, training_set.class_names, training_set.crop_size, pretrained,
                                         seed=config.seed)
    out = output_path(out_folder, name, 2 * checkpoint_bytes(model))
    tr_x, tr_y, va_x, va_y = training_set.split()
    final = None
    gen = iter_training(tr_x, tr_y, config, va_x, va_y, model=model, should_stop=should_stop)
    try:
        for upd in gen:
            if isinstance(upd, TrainingFinished):
                final = upd
                break
            yield upd
    finally:
        gen.close()
        del gen
        if final is None:  # an exception or the caller closed us: still give the device memory back
            model.cpu()
            del model
            free_device_memory(device, baseline)
    del model
    result = _save(final, training_set, info, kept, out, config, name, extra_meta or {}, t0)
    final.model.cpu()
    del final
    free_device_memory(device, baseline)
    yield result


def _save(final, ts: TrainingSet, info: StartInfo, kept: list[str], out: Path, config, name: str,
          extra: dict, t0: float) -> FineTuneResult:
    from .checkpoints import save_checkpoint
    from .training import checkpoint_meta

    seconds = time.perf_counter() - t0
    if not final.best:
        msg = "Stopped before the first epoch ended: nothing was saved; the previous models are unchanged."
        return FineTuneResult(None, {}, final.stopped, final.history, {}, seconds, msg, kept)
    meta = checkpoint_meta(
        final, ts.class_names, config, ts.images, name=Path(out).stem, label_scheme="custom (fine-tuned in napari)",
        head_fraction=ts.head_fraction, align_crops=True,
        fine_tuned_from=info.name, fine_tuned_from_source=str(info.source),
        head_rows_reused=kept, training_data=ts.summary(), train_seconds=seconds,
        protocol="fine-tuned on annotated heads; explicit stratified validation split made before training",
        **extra,
    )
    try:
        path = save_checkpoint(out, final.model, meta)
    except OSError as exc:
        raise FineTuneError(f"The checkpoint could not be written to {out} ({exc.strerror or exc}); the "
                            "previous models are unchanged.") from exc
    best = final.best
    how = "stopped by the user; kept" if final.stopped else "saved"
    msg = (f"{how} the best epoch (phase {best.get('phase')}, epoch {best.get('epoch')}: validation accuracy "
           f"{best.get('val_acc', float('nan')):.2f}, macro-F1 {best.get('val_macro_f1', float('nan')):.2f}) "
           f"to {path}")
    msg = msg[0].upper() + msg[1:]
    return FineTuneResult(path, meta, final.stopped, final.history, best, seconds, msg, kept)


def fine_tune(training_set: TrainingSet, source: str | Path, out_folder: str | Path, name: str, config,
              on_update: Callable | None = None, **kwargs) -> FineTuneResult:
    """Drive ``iter_finetune`` to the end (CLI, scripts, benchmarks)."""
    result = None
    for upd in iter_finetune(training_set, source, out_folder, name, config, **kwargs):
        if on_update is not None:
            on_update(upd)
        result = upd
    assert isinstance(result, FineTuneResult)
    return result
