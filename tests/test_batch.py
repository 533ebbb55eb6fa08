"""Batch analysis: outputs per image, errors.csv for bad files, resume, refusal to mix settings, dask cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_spermmorph.core import batch
from napari_spermmorph.core.batch import BatchInputError, expand_inputs, run_batch
from napari_spermmorph.core.defaults import STAIN_DELTA_E_LIMIT

CLASSES = ["normal", "tapered", "amorphous"]
PX = 0.1  # synthetic fields' pixel size (um)


def make_tiny_model(path):
    """An untrained Lite0 + CBAM at 64 px: the real model code path, without shipped weights."""
    import torch

    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(input_size=64, num_classes=len(CLASSES))
    model = build_model(spec, pretrained=False)
    # trained (as it were) on HuSHeM-like pink crops: the synthetic fields' stain is another lab's
    pink = {"lab_mean": [74.0, 33.6, -2.0], "lab_std": [10.3, 3.8, 4.7]}
    return save_checkpoint(path, model, {"class_names": CLASSES, "spec": spec.to_dict(), "head_fraction": 0.5,
                                         "name": "tiny", "colour_reference": pink})


def make_fields(folder, n: int = 3, corrupt: bool = True):
    """n synthetic fields (PNG and TIFF) and, optionally, a corrupt file with an image suffix."""
    from napari_spermmorph.core.synthetic import synthetic_field

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = synthetic_field(shape=(320, 320), n_heads=4, seed=i, pixel_size_um=PX)
        if i % 2:
            tifffile.imwrite(folder / f"field{i}.tif", f.image)
        else:
            Image.fromarray(f.image).save(folder / f"field{i}.png")
    if corrupt:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    return make_fields(tmp_path_factory.mktemp("data") / "sampleA")


@pytest.fixture(scope="module")
def serial_run(tiny_model, fields, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    res = run_batch([fields], out, tiny_model, pixel_size_um=PX, scheduler="sync", progress=False)
    return res, out


def test_analyze_writes_outputs_and_reports_bad_file(serial_run, fields):
    res, out = serial_run
    assert res.exit_code == 1
    assert res.counts() == {"done": 3, "skipped": 0, "error": 1}
    total = 0
    for stem in ("field0", "field1", "field2"):
        labels = tifffile.imread(out / f"{stem}.heads.tif")
        table = pd.read_csv(out / f"{stem}.heads.csv")
        assert labels.shape == (320, 320)
        assert set(table["label"]) <= set(np.unique(labels[labels > 0]).tolist())
        assert len(table) >= 1
        assert {"area_um2", "class", "confidence", "uncertain", *(f"p_{c}" for c in CLASSES)} <= set(table)
        assert set(table["class"]) <= set(CLASSES)
        assert table["stain_delta_e"].nunique() == 1  # one value per field
        np.testing.assert_allclose(table[[f"p_{c}" for c in CLASSES]].sum(1), 1.0, atol=1e-4)
        total += len(table)
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["image"].map(os.path.basename)) == ["broken.png"]
    assert "unreadable" in errors["reason"][0]
    samples = pd.read_csv(out / "samples.csv")
    row = samples.set_index("sample").loc["sampleA"]
    assert row["n_heads"] == total and row["n_images"] == 3 and row["n_failed"] == 1
    assert sum(row[f"n_{c}"] for c in CLASSES) == total
    assert "200" in row["warning"]
    assert row["stain_delta_e"] > STAIN_DELTA_E_LIMIT and "Delta E" in row["warning"]
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["sha256"] and run["versions"]["torch"] and run["settings"]["pixel_size_um"] == PX
    report = (out / "report.html").read_text()
    assert "sampleA" in report and run["model"]["sha256"] in report and "broken.png" in report
    assert "stain \N{GREEK CAPITAL LETTER DELTA}E" in report and f"{row['stain_delta_e']:.1f}" in report


def test_rerun_skips_done_and_force_redoes(serial_run, tiny_model, fields):
    _, out = serial_run
    mtime = (out / "field0.heads.csv").stat().st_mtime_ns
    res = run_batch([fields], out, tiny_model, pixel_size_um=PX, scheduler="sync", progress=False)
    assert res.counts() == {"done": 0, "skipped": 3, "error": 1}  # the bad file is retried, and fails again
    assert (out / "field0.heads.csv").stat().st_mtime_ns == mtime
    assert pd.read_csv(out / "samples.csv")["n_heads"].sum() == res.samples["n_heads"].sum() > 0
    with pytest.raises(BatchInputError, match="pixel size"):
        run_batch([fields], out, tiny_model, pixel_size_um=0.2, scheduler="sync", progress=False)
    res = run_batch([fields / "field0.png"], out, tiny_model, pixel_size_um=PX, scheduler="sync",
                    progress=False, force=True)
    assert res.counts() == {"done": 1, "skipped": 0, "error": 0} and res.exit_code == 0
    assert (out / "field0.heads.csv").stat().st_mtime_ns != mtime


def test_dask_local_cluster_matches_serial(serial_run, tiny_model, fields, tmp_path):
    distributed = pytest.importorskip("distributed")
    _, serial_out = serial_run
    good = [fields / "field0.png", fields / "field1.tif", fields / "field2.png"]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) \
            as cluster:
        res = run_batch(good, tmp_path, tiny_model, pixel_size_um=PX, scheduler=cluster.scheduler_address,
                        progress=False)
    assert res.counts()["done"] == 3 and res.exit_code == 0
    for stem in ("field0", "field1", "field2"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{stem}.heads.tif"),
                                      tifffile.imread(serial_out / f"{stem}.heads.tif"))
        a, b = pd.read_csv(tmp_path / f"{stem}.heads.csv"), pd.read_csv(serial_out / f"{stem}.heads.csv")
        assert list(a["class"]) == list(b["class"])
        np.testing.assert_allclose(a[[f"p_{c}" for c in CLASSES]], b[[f"p_{c}" for c in CLASSES]], atol=1e-5)


def test_heatmaps_written(tiny_model, fields, tmp_path):
    res = run_batch([fields / "field0.png"], tmp_path, tiny_model, pixel_size_um=PX, heatmaps=True,
                    scheduler="threads", workers=1, progress=False)
    assert res.exit_code == 0
    heat = tifffile.imread(tmp_path / "field0.heatmap.tif")
    assert heat.dtype == np.float32 and heat.shape == (320, 320)
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0
    with Image.open(tmp_path / "field0.heatmap.png") as im:
        assert im.size == (320, 320) and im.mode == "RGB"


def test_crop_folder_is_classified_without_segmentation(tiny_model, tmp_path):
    from napari_spermmorph.core.synthetic import synthetic_head_crops

    images, _ = synthetic_head_crops(n_per_class=2, classes=["normal", "tapered"], size=64, seed=0)
    folder = tmp_path / "crops" / "donor7"
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"c{i}.png")
    res = run_batch([tmp_path / "crops"], tmp_path / "out", tiny_model, scheduler="sync", progress=False)
    assert res.exit_code == 0 and [o.job.kind for o in res.outcomes] == ["crops"]
    table = pd.read_csv(tmp_path / "out" / "donor7.crops.csv")
    assert len(table) == len(images) and set(table["class"]) <= set(CLASSES)
    assert table["stain_delta_e"].nunique() == 1 and table["stain_delta_e"][0] > 0  # one value for the folder
    assert not list((tmp_path / "out").glob("*.heads.tif"))
    assert res.samples.set_index("sample").loc["donor7", "n_heads"] == len(images)
    # colour matching is a setting of the run: not mixed into a folder done without it, recorded when forced
    with pytest.raises(BatchInputError, match="match_colours"):
        run_batch([tmp_path / "crops"], tmp_path / "out", tiny_model, scheduler="sync", progress=False,
                  match_colours=True)
    run_batch([tmp_path / "crops"], tmp_path / "out", tiny_model, scheduler="sync", progress=False,
              match_colours=True, force=True)
    matched = pd.read_csv(tmp_path / "out" / "donor7.crops.csv")
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["match_colours"] is True
    assert not np.allclose(matched[[f"p_{c}" for c in CLASSES]], table[[f"p_{c}" for c in CLASSES]], atol=1e-4)
    np.testing.assert_allclose(matched["stain_delta_e"], table["stain_delta_e"])  # measured on the crops as given


def test_expand_inputs_rules(tmp_path):
    big = np.full((300, 300, 3), 200, np.uint8)
    small = np.full((80, 60, 3), 200, np.uint8)
    for sub, arr in (("a", big), ("b", big), ("crops", small)):
        (tmp_path / sub).mkdir()
        Image.fromarray(arr).save(tmp_path / sub / "img.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "out").mkdir()
    Image.fromarray(big).save(tmp_path / "out" / "old.png")  # inside --out: never an input
    jobs = expand_inputs([tmp_path], exclude=tmp_path / "out")
    kinds = {(j.kind, j.sample): j.stem for j in jobs}
    # same file name in two folders -> distinct output stems; the small-image folder is one crop set
    assert kinds == {("field", "a"): "a__img", ("field", "b"): "b__img", ("crops", "crops"): "crops"}
    assert [j.kind for j in expand_inputs([tmp_path / "crops"], mode="fields")] == ["field"]
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("image,sample\na/img.png,patient1\n")
    jobs = expand_inputs([str(tmp_path / "a" / "*.png")], sample_sheet=sheet)
    assert [(j.stem, j.sample) for j in jobs] == [("img", "patient1")]
    with pytest.raises(BatchInputError, match="not found"):
        expand_inputs([tmp_path / "missing"])
    with pytest.raises(BatchInputError, match="No files match"):
        expand_inputs([str(tmp_path / "*.jpg")])


def test_atomic_write_never_overwrites_without_force(tmp_path):
    p = tmp_path / "x.txt"
    assert batch.atomic_write(p, lambda t: Path(t).write_text("one"))
    assert not batch.atomic_write(p, lambda t: Path(t).write_text("two"))
    assert p.read_text() == "one"

    def fail(t):
        Path(t).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        batch.atomic_write(p, fail, force=True)
    assert p.read_text() == "one" and [f.name for f in tmp_path.iterdir()] == ["x.txt"]  # no temp left


def test_public_api_gives_the_batch_result(serial_run, tiny_model, fields):
    import napari_spermmorph as sm

    _, out = serial_run
    image = np.asarray(Image.open(fields / "field0.png"))
    model = sm.load_model(tiny_model, device="cpu")
    res = sm.classify(image, model=model, pixel_size_um=PX)
    saved = pd.read_csv(out / "field0.heads.csv")
    assert list(res.table["label"]) == list(saved["label"])
    assert list(res.table["class"].astype(str)) == list(saved["class"])
    np.testing.assert_array_equal(res.labels, tifffile.imread(out / "field0.heads.tif"))
    np.testing.assert_array_equal(sm.segment(image, PX), res.labels)
    again = sm.classify(image, res.labels, model, pixel_size_um=PX)  # hand-made labels path
    np.testing.assert_allclose(again.probs, res.probs, atol=1e-6)
    crops_table = sm.classify_crops(res.crops.images, model)
    assert len(crops_table) == len(res.table)
    maps = np.stack(sm.explain(res.crops.images[:2], model))  # one map per crop, in its own geometry
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
