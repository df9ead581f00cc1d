"""Metrics, evaluation over a layout split and the results report."""
