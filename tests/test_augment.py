import torch

from napari_spermmorph.core.augment import AugmentConfig, augment_batch


def _flips_only(keep_polarity: bool) -> AugmentConfig:
    return AugmentConfig(rotation_deg=0.0, scale=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0,
                         saturation=0.0, keep_polarity=keep_polarity)


def _kinds(keep_polarity: bool) -> set[str]:
    x = torch.rand(1, 3, 16, 16).repeat(64, 1, 1, 1)
    out = augment_batch(x, _flips_only(keep_polarity), torch.Generator().manual_seed(0))
    views = {"identity": x[0], "top-bottom": x[0].flip(1), "left-right": x[0].flip(2), "both": x[0].flip(1, 2)}
    kinds = set()
    for o in out:
        match = [k for k, v in views.items() if torch.allclose(o, v, atol=1e-5)]
        assert len(match) == 1
        kinds |= set(match)
    return kinds


def test_flips_keep_the_heads_polarity_when_asked():
    assert _kinds(keep_polarity=True) == {"identity", "top-bottom"}
    assert _kinds(keep_polarity=False) == {"identity", "top-bottom", "left-right", "both"}
