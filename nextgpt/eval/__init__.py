"""Evaluation harness: ``nextgpt eval TASK`` reproduces NExT-GPT's benchmark tables offline.

Tasks (:mod:`nextgpt.eval.tasks`) read a benchmark's standard annotation files
(:mod:`nextgpt.eval.readers`), answer each sample with the model in batches, append every answer
to a JSONL log (so an interrupted run resumes), and score the answers with the metrics of
:mod:`nextgpt.eval.metrics`. See docs/EVAL.md.
"""
