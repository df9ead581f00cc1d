"""Prediction: the Predictor, transforms shared with training, Monte-Carlo uncertainty and prompt tokenisation."""
