import numpy as np
import pytest

from napari_spermmorph.core.crops import (
    CropTransform,
    estimate_head_fraction,
    extract_head_crops,
    paste_to_field,
)
from napari_spermmorph.core.morphometry import measure_heads
from napari_spermmorph.core.synthetic import SYNTHETIC_CLASSES, synthetic_head_crops


def _head_map_in_crop(tf: CropTransform, labels: np.ndarray) -> np.ndarray:
    """1 where a crop pixel falls on the head in the field (nearest neighbour), else 0."""
    s = tf.crop_size
    yx = np.round(tf.crop_to_field(np.stack(np.mgrid[0:s, 0:s], axis=-1))).astype(int)
    h, w = labels.shape
    ok = (yx[..., 0] >= 0) & (yx[..., 0] < h) & (yx[..., 1] >= 0) & (yx[..., 1] < w)
    out = np.zeros((s, s), np.float32)
    out[ok] = labels[yx[..., 0][ok], yx[..., 1][ok]] == tf.label
    return out


def test_crops_shape_range_and_gray(field):
    hc = extract_head_crops(field.image, field.labels, crop_size=64)
    assert hc.images.shape == (8, 64, 64, 3) and hc.images.dtype == np.float32
    assert hc.images.min() >= 0 and hc.images.max() <= 1
    assert list(hc.label_ids) == list(range(1, 9)) and len(hc.transforms) == 8
    gray = extract_head_crops(field.image.mean(-1).astype(np.uint8), field.labels, crop_size=64)
    assert np.array_equal(gray.images[..., 0], gray.images[..., 2])


def test_crop_transform_inverse():
    tf = CropTransform(100.5, 80.0, 33.0, 0.7, 64, 1)
    pts = np.random.default_rng(0).uniform(0, 63, (50, 2))
    assert np.allclose(tf.field_to_crop(tf.crop_to_field(pts)), pts)


def test_heads_are_aligned_centred_and_scaled(field):
    hc = extract_head_crops(field.image, field.labels, crop_size=96, head_fraction=0.5)
    for tf in hc.transforms[2:]:  # skip the touching pair (two heads in the crop)
        m = _head_map_in_crop(tf, field.labels).astype(np.int32)
        row = measure_heads(m).iloc[0]
        assert abs(row["orientation_deg"]) < 5  # major axis horizontal
        assert row["length_px"] == pytest.approx(48, rel=0.06)
        assert row["centroid_y"] == pytest.approx(47.5, abs=1.5)
        assert row["centroid_x"] == pytest.approx(47.5, abs=1.5)


def test_no_black_borders_near_the_field_edge(field):
    # crops much wider than the field margin
    hc = extract_head_crops(field.image, field.labels, crop_size=128, head_fraction=0.1)
    for img, tf in zip(hc.images, hc.transforms):
        yx = tf.crop_to_field(np.stack(np.mgrid[0:128, 0:128], axis=-1))
        outside = (yx[..., 0] < 0) | (yx[..., 0] > 511) | (yx[..., 1] < 0) | (yx[..., 1] > 511)
        assert outside.any()
        assert img[outside].mean() > 0.6  # reflected light background, not zero padding


def test_paste_round_trip_iou(field):
    hc = extract_head_crops(field.image, field.labels, crop_size=64, align=True)
    maps = np.stack([_head_map_in_crop(tf, field.labels) for tf in hc.transforms])
    for k, tf in enumerate(hc.transforms):
        back = paste_to_field(maps[k: k + 1], [tf], field.labels.shape, labels=field.labels, dilate_px=3)
        back = back > 0.5
        head = field.labels == tf.label
        assert (back & head).sum() / (back | head).sum() > 0.8
    full = paste_to_field(maps, hc.transforms, field.labels.shape, masks=field.labels)
    assert full.dtype == np.float32 and full.shape == field.labels.shape
    assert ((full > 0.5) & (field.labels > 0)).sum() / ((full > 0.5) | (field.labels > 0)).sum() > 0.8


def test_paste_rejects_mismatched_maps(field):
    hc = extract_head_crops(field.image, field.labels, crop_size=32)
    with pytest.raises(ValueError, match="maps must be"):
        paste_to_field(np.zeros((3, 32, 32)), hc.transforms, field.labels.shape)


def test_estimate_head_fraction_on_synthetic_crops():
    imgs, labels = synthetic_head_crops(6, size=80, seed=1)
    normal = [im for im, y in zip(imgs, labels) if SYNTHETIC_CLASSES[y] in ("normal", "tapered")]
    assert estimate_head_fraction(normal) == pytest.approx(0.55, abs=0.05)
    with pytest.raises(ValueError):
        estimate_head_fraction([np.full((40, 40, 3), 200, np.uint8)])


def test_synthetic_crops_are_seeded_and_class_shaped():
    a, ya = synthetic_head_crops(5, size=48, seed=3)
    b, yb = synthetic_head_crops(5, size=48, seed=3)
    assert a.shape == (20, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert np.bincount(ya).tolist() == [5, 5, 5, 5]
    # tapered heads are more elongated than normal ones
    from napari_spermmorph.core.images import stain_channel

    def ratio(img):
        m = (stain_channel(img) > 0.4).astype(np.int32)
        return measure_heads(m)["ellipticity"].max()

    r_norm = np.median([ratio(x) for x, y in zip(a, ya) if y == 0])
    r_tap = np.median([ratio(x) for x, y in zip(a, ya) if y == 1])
    assert r_tap > r_norm + 0.4


def _head_with_tail(angle_deg: float, tail: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A field with one head (pale acrosome at the front, dark nucleus behind) whose back points along
    ``angle_deg`` (counter-clockwise as displayed); returns (image, labels, a tail point (y, x))."""
    from skimage.draw import ellipse, line

    img = np.full((160, 160, 3), 225, np.uint8)
    lab = np.zeros((160, 160), np.int32)
    a = np.radians(angle_deg)
    back = np.array([-np.sin(a), np.cos(a)])  # (dy, dx) towards the back
    cy, cx = 80.0, 80.0
    rr, cc = ellipse(cy, cx, 9, 15, shape=lab.shape, rotation=a)  # skimage: rotation CCW in (row, col)
    lab[rr, cc] = 1
    along = (rr - cy) * back[0] + (cc - cx) * back[1]
    img[rr, cc] = np.where((along > 0)[:, None], [70, 10, 180], [150, 105, 215])
    end = np.array([cy, cx]) + back * 60
    if tail:
        start = np.array([cy, cx]) + back * 16
        lr, lc = line(*np.round(start).astype(int), *np.round(end).astype(int))
        img[lr, lc] = [120, 100, 190]
    return img, lab, end


@pytest.mark.parametrize("angle", [0.0, 37.0, 145.0, 180.0, 250.0, 300.0])
@pytest.mark.parametrize("tail", [True, False])
def test_oriented_crops_put_the_heads_back_on_the_right(angle, tail):
    img, lab, tail_pt = _head_with_tail(angle, tail)
    hc = extract_head_crops(img, lab, crop_size=64, orient=True)
    r, c = hc.transforms[0].field_to_crop(tail_pt)
    assert c > 63 / 2 and abs(r - 63 / 2) < 3  # the back (tail end) lies to the right, on the axis
    half = 64 // 2
    crop_stain = 1 - hc.images[0].min(-1)
    assert crop_stain[24:40, half:half + 14].mean() > crop_stain[24:40, half - 14:half].mean()  # dark nucleus right


def test_orienting_only_turns_a_crop_by_180_degrees(field):
    plain = extract_head_crops(field.image, field.labels, crop_size=48)
    turned = extract_head_crops(field.image, field.labels, crop_size=48, orient=True)
    n_turned = 0
    for p, t, tp, tt in zip(plain.images, turned.images, plain.transforms, turned.transforms):
        same = np.array_equal(p, t)
        assert same or np.allclose(p[::-1, ::-1], t, atol=1e-6)
        assert np.isclose((tt.angle_deg - tp.angle_deg) % 360, 0 if same else 180)
        n_turned += not same
        assert np.array_equal(_head_map_in_crop(tt, field.labels) > 0,
                              (_head_map_in_crop(tp, field.labels) > 0)[::-1, ::-1] if not same
                              else _head_map_in_crop(tp, field.labels) > 0)
    assert 0 < n_turned < len(plain)  # random directions in the field: some heads needed turning, some not
