import numpy as np
import pytest
from skimage.draw import ellipse

from napari_spermmorph.core.morphometry import WhoThresholds, measure_heads


def _ellipse_labels(r_rad, c_rad, deg, shape=(300, 300)):
    lab = np.zeros(shape, np.int32)
    rr, cc = ellipse(shape[0] // 2, shape[1] // 2, r_rad, c_rad, shape=shape, rotation=np.deg2rad(deg))
    lab[rr, cc] = 5
    return lab


@pytest.mark.parametrize("deg", [0.0, 30.0, -60.0, 89.0])
def test_ellipse_axes_and_orientation(deg):
    lab = _ellipse_labels(30, 45, deg)  # semi-axes: 30 rows, 45 columns -> major axis along x at 0 deg
    df = measure_heads(lab)
    assert list(df["label"]) == [5]
    row = df.iloc[0]
    assert row["length_px"] == pytest.approx(90, rel=0.05)
    assert row["width_px"] == pytest.approx(60, rel=0.05)
    assert row["ellipticity"] == pytest.approx(1.5, rel=0.05)
    assert row["area_px2"] == pytest.approx(np.pi * 30 * 45, rel=0.05)
    ramanujan = np.pi * (3 * 75 - np.sqrt((3 * 30 + 45) * (30 + 3 * 45)))
    assert row["perimeter_px"] == pytest.approx(ramanujan, rel=0.05)
    diff = (row["orientation_deg"] - deg + 90) % 180 - 90
    assert abs(diff) < 2
    assert row["solidity"] > 0.95


def test_units_and_who_flags():
    # 44 x 30 px at 0.1 um/px -> 4.4 x 3.0 um, ratio 1.47: normal
    lab1 = np.where(_ellipse_labels(15, 22, 10) > 0, 1, 0)
    lab2 = np.where(_ellipse_labels(10, 30, 0) > 0, 2, 0)  # 6.0 x 2.0 um: too long, too thin, ratio 3
    lab = np.concatenate([lab1, lab2], axis=1)
    df = measure_heads(lab, pixel_size_um=0.1).set_index("label")
    assert {"area_um2", "length_um", "width_um", "perimeter_um"} <= set(df.columns)
    assert df.loc[1, "length_um"] == pytest.approx(4.4, rel=0.05)
    assert bool(df.loc[1, "who_shape_normal"]) is True
    assert not df.loc[2, "who_length_ok"] and not df.loc[2, "who_width_ok"] and not df.loc[2, "who_ratio_ok"]
    assert bool(df.loc[2, "who_shape_normal"]) is False
    strict = measure_heads(lab, 0.1, WhoThresholds(length_um=(4.6, 5.0))).set_index("label")
    assert not strict.loc[1, "who_length_ok"]


def test_without_pixel_size_size_flags_are_missing():
    df = measure_heads(_ellipse_labels(15, 22, 0))
    assert "length_px" in df.columns and "length_um" not in df.columns
    assert df["who_length_ok"].iloc[0] is None and df["who_shape_normal"].iloc[0] is None
    assert bool(df["who_ratio_ok"].iloc[0]) is True


def test_empty_labels_give_empty_table_with_columns():
    df = measure_heads(np.zeros((20, 20), np.int32), 0.1)
    assert len(df) == 0 and df.columns[0] == "label" and "who_shape_normal" in df.columns


def test_segmented_field_is_measured(field):
    from napari_spermmorph.core.segmentation import segment_heads

    df = measure_heads(segment_heads(field.image, 0.1), 0.1)
    assert len(df) == 8
    assert df["length_um"].median() == pytest.approx(4.5, rel=0.1)
    assert df["width_um"].median() == pytest.approx(3.0, rel=0.12)
