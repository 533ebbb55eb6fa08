"""Defaults shared by the CLI, the widgets and the API (torch-free, so the CLI can read them cheaply)."""

#: Test-time augmentation views when classifying: the 4 flips that keep an aligned head's axis. It won in the
#: cross-validation benchmark (benchmarks/bench_classifier.py, "+ TTA x4" rows) at 4x the classification cost.
DEFAULT_TTA = 4

#: Colour difference (CIE76 Delta E) between the average colour of the crops being classified and the model's
#: training crops above which the summary warns of another stain. Batches of ten crops from a shipped model's own
#: training set sit at a median 1.2-1.3 (at most 7.6), other labs' crops and fields at 13-32
#: (benchmarks/bench_cross_dataset.py, "Stain distance" table).
STAIN_DELTA_E_LIMIT = 10.0
