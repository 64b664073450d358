"""Real-scale benchmarks of nextgpt. Run a script from the repository root as ``python -m bench.<name>``.

Shared parts, by topic: :mod:`bench.sizes` (the ``--size`` overlays on the presets and model
assembly), :mod:`bench.components` (real-shaped random decoder components), :mod:`bench.inputs`
(synthetic batches and media), :mod:`bench.hardware` (devices, dtypes, datasheet tables, versions),
:mod:`bench.flops` (FLOP formulas), :mod:`bench.timing`, :mod:`bench.report` (markdown / JSON) and
:mod:`bench.cli` (the flags every script takes).
"""
