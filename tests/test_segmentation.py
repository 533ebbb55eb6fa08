import numpy as np
import pytest

from napari_spermmorph.core.images import ImageInputError, as_float_rgb, stain_channel
from napari_spermmorph.core.segmentation import (
    SegmentationCancelled,
    SegmentationParams,
    segment_heads,
    segment_image,
)
from napari_spermmorph.core.synthetic import synthetic_field


def _match_count(gt: np.ndarray, pred: np.ndarray, thr: float = 0.5) -> int:
    """Number of ground-truth heads with a prediction at IoU >= thr (IoU > 0.5 makes it one-to-one)."""
    n = 0
    for g in range(1, gt.max() + 1):
        m = gt == g
        ids, cnt = np.unique(pred[m], return_counts=True)
        cnt, ids = cnt[ids > 0], ids[ids > 0]
        if ids.size:
            p = pred == ids[np.argmax(cnt)]
            n += (m & p).sum() / (m | p).sum() >= thr
    return n


def test_segments_known_heads_with_touching_pair_tails_and_debris(field):
    pred = segment_heads(field.image, field.pixel_size_um)
    assert pred.dtype == np.int32 and pred.shape == field.labels.shape
    assert pred.max() == field.labels.max() == 8
    assert _match_count(field.labels, pred) == 8


@pytest.mark.parametrize("seed", [1, 2])
def test_other_seeds_and_gray(seed):
    f = synthetic_field(seed=seed, rgb=False)
    pred = segment_heads(f.image, f.pixel_size_um)
    assert _match_count(f.labels, pred) >= 7
    assert pred.max() <= f.labels.max() + 1


def test_dtypes_uint16_and_float_give_the_same_heads(field):
    ref = segment_heads(field.image, 0.1)
    u16 = segment_heads(field.image.astype(np.uint16) * 257, 0.1)
    flt = segment_heads(field.image.astype(np.float32) / 255.0, 0.1)
    assert u16.max() == flt.max() == ref.max()
    assert ((u16 > 0) == (ref > 0)).mean() > 0.999


def test_rgba_drops_alpha(field):
    rgba = np.concatenate([field.image, np.full(field.image.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    assert np.array_equal(as_float_rgb(rgba), as_float_rgb(field.image))
    assert segment_heads(rgba, 0.1).max() == 8


def test_stack_is_processed_plane_by_plane(field):
    other = synthetic_field(seed=3)
    stack = np.stack([field.image, other.image])
    calls = []
    out = segment_image(stack, 0.1, progress=lambda d, t: calls.append((d, t)))
    assert out.shape == (2, 512, 512)
    assert calls == [(1, 2), (2, 2)]
    assert np.array_equal(out[0], segment_heads(field.image, 0.1))
    assert np.array_equal(out[1], segment_heads(other.image, 0.1))


def test_cancellation_between_planes(field):
    stack = np.stack([field.image] * 3)
    seen = []

    def stop():
        return len(seen) >= 1

    with pytest.raises(SegmentationCancelled):
        segment_image(stack, 0.1, progress=lambda d, t: seen.append(d), should_stop=stop)
    assert seen == [1]


def test_constant_image_returns_empty_labels_without_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = segment_heads(np.full((64, 80, 3), 200, np.uint8))
    assert out.shape == (64, 80) and out.max() == 0


def test_nan_pixels_are_background(field):
    img = field.image.astype(np.float32) / 255.0
    img[:40, :40] = np.nan
    out = segment_heads(img, 0.1)
    assert out[:40, :40].max() == 0
    assert out.max() >= 7
    with pytest.raises(ImageInputError, match="only NaN"):
        segment_heads(np.full((32, 32), np.nan, np.float32))


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros(10, np.uint8), "at least 2 dimensions"),
        (np.zeros((4, 4, 4, 5), np.uint8), "segment_image"),
        (np.array([["a", "b"], ["c", "d"]]), "Unsupported pixel type"),
    ],
)
def test_bad_input_messages(bad, msg):
    with pytest.raises(ImageInputError, match=msg):
        if bad.ndim == 4:
            segment_heads(bad)
        else:
            segment_image(bad)


def test_empty_plane_message_from_segment_heads():
    with pytest.raises(ImageInputError, match="empty"):
        segment_heads(np.zeros((0, 10, 3), np.uint8))


def test_bad_pixel_size(field):
    with pytest.raises(ImageInputError, match="pixel size"):
        segment_heads(field.image, -1.0)


def test_huge_planes_are_tiled_with_the_same_result(field):
    ref = segment_heads(field.image, 0.1)
    tiled = segment_heads(field.image, 0.1, SegmentationParams(max_plane_pixels=100_000, tile_size_um=20.0))
    assert tiled.max() == ref.max()
    assert ((tiled > 0) == (ref > 0)).mean() > 0.999


def test_exclude_border_drops_cut_heads(field):
    ys, xs = np.nonzero(field.labels == 3)
    x = int(xs.mean())  # cut the field through the middle of head 3
    img = field.image[:, x:]
    keep = segment_heads(img, 0.1)
    drop = segment_heads(img, 0.1, SegmentationParams(exclude_border=True))
    on_border = set(np.unique(keep[:, 0])) - {0}
    assert on_border  # the cut head is found when kept ...
    assert drop[:, 0].max() == 0  # ... and gone when excluded
    assert drop.max() == keep.max() - len(on_border)


def test_stain_channel_is_high_on_heads(field):
    s = stain_channel(field.image)
    assert s[field.labels > 0].mean() > s[field.labels == 0].mean() + 0.3
