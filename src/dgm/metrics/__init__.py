"""Measuring instruments: likelihood bounds, sample quality (FID, KID, precision/recall, Inception Score, mode
coverage), representation quality, disentanglement, translation, and the domain classifiers behind several of them.

`dgm.metrics.registry` holds the metric registry `dgm evaluate` runs (each metric declares the capabilities it
needs, its default, and the direction, unit and leaderboard rank of its numbers); the modules it lists in MODULES
register the metrics. Nothing in this package imports dgm.evaluate, dgm.tasks, dgm.figures, dgm.serve or dgm.cli.
"""
