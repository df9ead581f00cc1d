"""Data layout and datasets."""
