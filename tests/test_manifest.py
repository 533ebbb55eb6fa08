"""The npe2 manifest is valid, installed, and points at real code."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "src" / "napari_spermmorph" / "napari.yaml"
MANIFEST = PluginManifest.from_file(PACKAGED)
WIDGET_COMMANDS = {w.command for w in MANIFEST.contributions.widgets or []}


def _command_params():
    return [pytest.param(cmd, id=cmd.id) for cmd in MANIFEST.contributions.commands or []]


def test_npe2_validate_cli_passes():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-spermmorph"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_installed_manifest_is_the_packaged_file():
    installed = PluginManifest.from_distribution("napari-spermmorph")
    assert installed.name == "napari-spermmorph"
    assert installed.display_name == "Sperm Morphology"
    assert installed.model_dump() == MANIFEST.model_dump()


def test_root_manifest_is_the_packaged_file():
    root = REPO / "napari.yaml"
    assert root.is_symlink(), "napari.yaml at the repo root should be a symlink to the packaged manifest"
    assert root.resolve() == PACKAGED.resolve()


def test_menus_are_napari_contributable_menus():
    from napari._app_model.constants._menus import is_menu_contributable

    menus = MANIFEST.contributions.menus or {}
    assert menus, "the manifest should place its widgets in napari's Layers menus"
    for menu_id, items in menus.items():
        assert is_menu_contributable(menu_id), menu_id
        for item in items:
            assert item.command in WIDGET_COMMANDS, f"{item.command} in {menu_id} is not a widget"


def test_every_widget_is_in_a_menu():
    in_menus = {item.command for items in (MANIFEST.contributions.menus or {}).values() for item in items}
    assert WIDGET_COMMANDS.issubset(in_menus)


def test_sample_keys():
    keys = {s.key for s in MANIFEST.contributions.sample_data or []}
    assert keys == {"field", "head_crops", "synthetic_field"}


@pytest.mark.parametrize("cmd", list(_command_params()))
def test_python_name_resolves_to_callable(cmd):
    module_name, attr = cmd.python_name.split(":")
    obj = getattr(importlib.import_module(module_name), attr)
    assert callable(obj)
    if cmd.id in WIDGET_COMMANDS:
        from qtpy.QtWidgets import QWidget

        assert inspect.isclass(obj) and issubclass(obj, QWidget), f"{cmd.python_name} is not a QWidget"
        params = list(inspect.signature(obj.__init__).parameters)
        assert params[1:2] == ["napari_viewer"], f"{cmd.python_name} must take napari_viewer first"


@pytest.mark.gui
def test_every_widget_docks_and_every_sample_loads_in_a_real_viewer(make_napari_viewer):
    """Through napari's own plugin machinery: each manifest widget is added with add_plugin_dock_widget, each
    sample is opened with open_sample."""
    viewer = make_napari_viewer()
    commands = {c.id: c.python_name for c in MANIFEST.contributions.commands}
    for contrib in MANIFEST.contributions.widgets:
        module, name = commands[contrib.command].split(":")
        expected = getattr(importlib.import_module(module), name)
        dock, widget = viewer.window.add_plugin_dock_widget("napari-spermmorph", contrib.display_name)
        assert isinstance(widget, expected), contrib.display_name
    for sample in MANIFEST.contributions.sample_data:
        before = len(viewer.layers)
        viewer.open_sample("napari-spermmorph", sample.key)
        assert len(viewer.layers) > before, sample.key
