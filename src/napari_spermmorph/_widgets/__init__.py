"""napari widgets: thin Qt layers over ``napari_spermmorph.core`` (no science here, torch imported lazily)."""
