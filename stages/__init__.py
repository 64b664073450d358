"""Training: the three NExT-GPT stages as Lightning modules, webdataset data, frozen-feature caches.

Installed as ``nextgpt.stages``. Entry point: :func:`nextgpt.stages.train.train` (``make stage1``,
``nextgpt train --stage 1``). Importing this package does not import Lightning.
"""
