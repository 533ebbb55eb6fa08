"""Defaults shared by the CLI, the widgets and the API (torch-free, so the CLI can read them cheaply)."""

#: Test-time augmentation views when classifying: the 4 flips that keep an aligned head's axis. It won in the
#: cross-validation benchmark (benchmarks/bench_classifier.py, "+ TTA x4" rows) at 4x the classification cost.
DEFAULT_TTA = 4
