"""Shared fixtures: a seeded synthetic stained field with known heads (touching pair, tails, debris)."""

from __future__ import annotations

import pytest

from napari_spermmorph.core.synthetic import SyntheticField, synthetic_field


@pytest.fixture(scope="session")
def field() -> SyntheticField:
    return synthetic_field(shape=(512, 512), n_heads=8, seed=0, touching_pairs=1, rgb=True,
                           pixel_size_um=0.1, debris=True)
