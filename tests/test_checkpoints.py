"""Checkpoints: exact round trip, clear refusal of corrupted, truncated and foreign files."""

import pytest
import torch

from napari_spermmorph.core.checkpoints import (
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from napari_spermmorph.core.inference import Classifier
from napari_spermmorph.core.models import ModelSpec, build_model


def _tiny(tmp_path, half=False):
    spec = ModelSpec(num_classes=3, input_size=64)
    net = build_model(spec, pretrained=False).eval()
    meta = {"spec": spec.to_dict(), "class_names": ["a", "b", "c"], "head_fraction": 0.5, "name": "tiny"}
    return net, save_checkpoint(tmp_path / "tiny.safetensors", net, meta, half=half)


def test_round_trip_is_exact(tmp_path):
    net, path = _tiny(tmp_path, half=False)
    state, meta = load_checkpoint(path)
    for k, v in net.state_dict().items():
        assert torch.equal(state[k].to(v.dtype), v), k
    assert meta["class_names"] == ["a", "b", "c"]
    assert meta["spec"]["num_classes"] == 3


def test_classifier_output_matches_network(tmp_path):
    net, path = _tiny(tmp_path, half=False)
    clf = Classifier.load(path, device="cpu")
    crops = torch.rand(4, 64, 64, 3).numpy()
    from napari_spermmorph.core.preprocess import crops_to_tensor, normalise

    x = normalise(crops_to_tensor(crops, 64), net.spec.mean, net.spec.std)
    with torch.inference_mode():
        ref = net(x).softmax(1).numpy()
    assert abs(clf.predict_proba(crops) - ref).max() < 1e-4


def test_half_storage_round_trip_within_fp16(tmp_path):
    net, path = _tiny(tmp_path, half=True)
    state, _ = load_checkpoint(path)
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(state[k], v.half().float()), k


def test_corrupted_checkpoint_is_refused(tmp_path):
    _, path = _tiny(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # flip bits in the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    _, path = _tiny(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a napari-spermmorph checkpoint"):
        read_metadata(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    _tiny(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


def test_channels_last_model_saves(tmp_path):
    """Models run channels_last for speed; saving must still write plain contiguous tensors."""
    spec = ModelSpec(num_classes=2, input_size=64)
    net = build_model(spec, pretrained=False).to(memory_format=torch.channels_last)
    path = save_checkpoint(tmp_path / "cl", net, {"spec": spec.to_dict(), "class_names": ["a", "b"]})
    state, _ = load_checkpoint(path)
    assert set(state) == set(net.state_dict())


def test_written_files_are_readable_by_others(tmp_path):
    """Atomic writes go through a 0600 temp file; the result must still get the usual permissions."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        _, path = _tiny(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
