"""Experiment tracking across runs: the SQLite index of a runs folder, filters, diffs, plots, the
HTML report, sweeps, lineage and accelerate's trackers. The ``peftkit runs`` commands are in
:mod:`peftkit.tracking.commands`; docs/tracking.md describes the whole."""
