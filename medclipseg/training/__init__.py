"""Stage 1 (backbone alignment for the tiny demo), stage 2 (the paper's training loop), their
settings (``config``, importable without torch) and the losses."""
