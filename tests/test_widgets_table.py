"""Results table widget: shows a heads layer's features, sorts, filters by class, selects heads, exports CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_spermmorph._widgets._layers import as_features


def _heads_layer(viewer):
    labels = np.zeros((100, 120), np.int32)
    labels[10:20, 10:30] = 1
    labels[50:70, 60:80] = 2
    labels[80:90, 100:110] = 3
    table = pd.DataFrame({
        "label": [1, 2, 3],
        "centroid_y": [14.5, 59.5, 84.5],
        "centroid_x": [19.5, 69.5, 104.5],
        "area_um2": [5.0, 12.0, 2.5],
        "class": pd.Categorical(["normal", "tapered", "normal"], categories=["normal", "tapered"]),
        "uncertain": [False, True, False],
    })
    return viewer.add_labels(labels, name="heads", features=as_features(table), scale=(0.5, 0.5),
                             translate=(10.0, 20.0))


def test_table_sort_filter_select_export(make_napari_viewer, tmp_path):
    from napari_spermmorph._widgets.table_widget import ResultsTableWidget

    viewer = make_napari_viewer()
    layer = _heads_layer(viewer)
    w = ResultsTableWidget(viewer)
    w.set_layer(layer)
    assert w.table.rowCount() == 3
    headers = [w.table.horizontalHeaderItem(j).text() for j in range(w.table.columnCount())]
    assert "index" not in headers and headers[0] == "label"
    # numeric sort on area
    col = headers.index("area_um2")
    w.table.sortItems(col)
    assert [w.table.item(r, col).text() for r in range(3)] == ["2.5", "5", "12"]
    # filter by class
    w.class_filter.setCurrentText("normal")
    assert sorted(w.visible_labels()) == [1, 3]
    w.class_filter.setCurrentText("uncertain only")
    assert w.visible_labels() == [2]
    w.class_filter.setCurrentText("all classes")
    assert sorted(w.visible_labels()) == [1, 2, 3]
    # click a row (after sorting): selects that head, camera centred on its centroid in world coordinates
    row = next(r for r in range(3) if w.table.item(r, 0).text() == "2")
    w.select_row(row)
    assert layer.selected_label == 2
    np.testing.assert_allclose(viewer.camera.center[-2:], (10 + 59.5 * 0.5, 20 + 69.5 * 0.5))
    # export
    out = w.export_csv(tmp_path / "heads")
    back = pd.read_csv(out)
    assert out.suffix == ".csv" and list(back["label"]) == [1, 2, 3]
    assert {"area_um2", "class", "uncertain"} <= set(back.columns) and "index" not in back.columns
    # the table follows feature changes
    feats = layer.features.copy()
    layer.features = feats.iloc[:2]
    assert w.table.rowCount() == 2


def test_crop_stack_table(make_napari_viewer):
    from napari_spermmorph._widgets.table_widget import ResultsTableWidget

    viewer = make_napari_viewer()
    crops = viewer.add_image(np.zeros((4, 16, 16, 3), np.float32), rgb=True, name="crops")
    crops.metadata["spermmorph_table"] = pd.DataFrame({"label": [7, 8, 9, 10], "frame": [0, 1, 2, 3],
                                                       "class": ["a", "b", "a", "a"]})
    w = ResultsTableWidget(viewer)
    w.set_layer(crops)
    assert w.table.rowCount() == 4
    w.select_head(9)
    assert viewer.dims.current_step[0] == 2


def test_empty_layer(make_napari_viewer):
    from napari_spermmorph._widgets.table_widget import ResultsTableWidget

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((10, 10), np.int32), name="nothing")
    w = ResultsTableWidget(viewer)
    w.set_layer(layer)
    assert w.table.rowCount() == 0
    assert "0 head(s)" in w.status.text()
