"""Stage 1 (backbone alignment for the tiny demo), stage 2 (the paper's training loop) and the losses."""
