"""Metrics of the evaluation harness, each from a maintained library where one exists."""
