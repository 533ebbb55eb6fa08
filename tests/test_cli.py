"""The ``spermmorph`` command: clear errors (exit 2, no traceback), evaluate/models/train/cv/analyze/demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_spermmorph.cli import main

CLASSES = ["normal", "tapered", "amorphous"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(input_size=64, num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_checkpoint(path, build_model(spec, pretrained=False),
                           {"class_names": CLASSES, "spec": spec.to_dict(), "head_fraction": 0.5, "name": "tiny"})


def class_folders(root, folders=("01_Normal", "02_Tapered", "03_Amorphous"), n: int = 4):
    """A tiny class-folder dataset of synthetic crops; folder names canonicalise to the class names."""
    from napari_spermmorph.core.synthetic import synthetic_head_crops

    images, labels = synthetic_head_crops(n_per_class=n, classes=CLASSES, size=64, seed=1)
    for i, folder in enumerate(folders):
        (root / folder).mkdir(parents=True)
        for j, img in enumerate(images[labels == i]):
            Image.fromarray(img).save(root / folder / f"{j}.png")
    return root


def test_models_json_lists_registry(capsys):
    from napari_spermmorph.core.registry import shipped_models

    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list) and listed == shipped_models()
    for m in listed:
        assert {"name", "sha256", "classes"} <= set(m)


def test_evaluate_writes_json(tiny_model, tmp_path, capsys):
    data = class_folders(tmp_path / "ds")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(tiny_model), str(data), "--json", str(out), "--tta", "2"]) == 0
    m = json.loads(out.read_text())
    assert m["n"] == 12 and 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    assert np.sum(m["confusion_matrix"]) == 12 and m["class_names"] == CLASSES
    assert "stain_delta_e" not in m  # the tiny model records no training colours: nothing to compare with
    assert m["model"]["sha256"] and "accuracy" in capsys.readouterr().out


def test_evaluate_reports_the_stain_distance(tmp_path, capsys):
    """A model that records its training colours says how far the evaluated crops are from them."""
    import torch

    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="simplecnn", cbam=False, input_size=64, num_classes=len(CLASSES))
    pink = {"lab_mean": [74.0, 33.6, -2.0], "lab_std": [10.3, 3.8, 4.7]}
    model = save_checkpoint(tmp_path / "pink.safetensors", build_model(spec, pretrained=False), {
        "class_names": CLASSES, "spec": spec.to_dict(), "head_fraction": 0.5, "name": "pink", "colour_reference": pink})
    data = class_folders(tmp_path / "ds")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(model), str(data), "--json", str(out), "--tta", "1"]) == 0
    m = json.loads(out.read_text())
    assert m["stain_delta_e"] > 10 and "Delta E" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(model), str(data), "--json", str(out), "--tta", "1",
                 "--match-colours"]) == 0
    matched = json.loads(out.read_text())
    assert matched["match_colours"] is True and matched["stain_delta_e"] == pytest.approx(m["stain_delta_e"])


def test_evaluate_mismatched_classes_is_a_clear_error(tiny_model, tmp_path, capsys):
    data = class_folders(tmp_path / "ds", folders=("normal", "tapered", "pyriform"))
    assert main(["evaluate", "--model", str(tiny_model), str(data)]) == 2
    err = capsys.readouterr().err
    assert "pyriform" in err and "amorphous" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--model", "no-such-model", "."], "no-such-model"),
    (["analyze", "/no/such/folder", "--out", "OUT", "--model", "MODEL"], "Input not found"),
    (["cv", "/no/such/folder"], "not found"),
    # the tiny model records no training colours: nothing to match to
    (["evaluate", "--model", "MODEL", "--match-colours", "."], "records no training colours"),
    (["analyze", "IN", "--out", "OUT", "--model", "MODEL", "--match-colours"], "records no training colours"),
])
def test_user_errors_exit_2_without_traceback(argv, needle, tiny_model, tmp_path, capsys):
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(tmp_path / "field.png")
    argv = [a.replace("OUT", str(tmp_path / "o")).replace("MODEL", str(tiny_model))
            .replace("IN", str(tmp_path / "field.png")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_analyze_cli_exit_codes_and_resume(tiny_model, tmp_path, capsys):
    from napari_spermmorph.core.synthetic import synthetic_field

    src = tmp_path / "in" / "donor1"
    src.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(synthetic_field(shape=(320, 320), n_heads=3, seed=10 + i).image).save(src / f"f{i}.png")
    (src / "odd.tif").write_bytes(b"II*\x00garbage")
    out = tmp_path / "out"
    argv = ["analyze", str(tmp_path / "in"), "--out", str(out), "--model", str(tiny_model), "--pixel-size", "0.1",
            "--scheduler", "sync", "--no-progress"]
    assert main(argv) == 1  # one image failed
    assert {"f0.heads.tif", "f0.heads.csv", "f1.heads.csv", "report.html", "run.json", "samples.csv",
            "errors.csv"} <= {p.name for p in out.iterdir()}
    assert list(pd.read_csv(out / "errors.csv")["image"].str.endswith("odd.tif")) == [True]
    assert "donor1" in capsys.readouterr().out
    (src / "odd.tif").unlink()
    assert main(argv) == 0  # the rest is done: skipped, and nothing failed
    run = json.loads((out / "run.json").read_text())
    assert run["counts"] == {"done": 0, "skipped": 2, "error": 0} and run["command"][:2] == ["spermmorph", "analyze"]


def test_train_and_cv_run_end_to_end(tmp_path, capsys):
    data = class_folders(tmp_path / "ds", n=6)
    ckpt = tmp_path / "m.safetensors"
    small = ["--size", "32", "--epochs1", "0", "--epochs2", "1", "--arch", "simplecnn", "--batch-size", "8"]
    assert main(["train", str(data), "--out", str(ckpt), *small]) == 0
    from napari_spermmorph.core.checkpoints import read_metadata

    meta = read_metadata(ckpt)
    assert meta["class_names"] == CLASSES and meta["spec"]["input_size"] == 32
    out = tmp_path / "cv.json"
    assert main(["cv", str(data), "--folds", "2", "--json", str(out), *small]) == 0
    cv = json.loads(out.read_text())
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2 and np.sum(cv["confusion_matrix"]) == 18
    assert sum(f["n"] for f in cv["per_fold"]) == 18
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(ckpt), "--val-fraction", "0", *small]) == 0
    assert "final weights, no validation" in capsys.readouterr().out
    meta = read_metadata(ckpt)
    assert meta["train_config"]["val_fraction"] == 0.0 and meta["best_validation"]["final_weights"]


@pytest.mark.slow
def test_demo_headless_on_sample_field(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(tiny_model)]) == 0
    assert (out / "field.heads.csv").is_file() and (out / "field.heatmap.png").is_file()
    assert (out / "report.html").is_file() and str(out.resolve()) in capsys.readouterr().out


def test_import_does_not_load_torch_and_entry_point_runs():
    code = ("import sys, napari_spermmorph as sm, napari_spermmorph.api, napari_spermmorph.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'; assert callable(sm.classify); "
            "assert 'torch' not in sys.modules; print(sm.__version__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0.1.0"
    res = subprocess.run([sys.executable, "-m", "napari_spermmorph.cli", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "analyze" in res.stdout and "demo" in res.stdout
