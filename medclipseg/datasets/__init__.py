"""The authors' data folder layout, read and written (splits, prompt tables, owned-folder guard), and the torch Dataset over it."""
