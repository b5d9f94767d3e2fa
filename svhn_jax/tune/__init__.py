"""Choosing settings on validation: sweeps (`sweep`) and the learning-rate range
test (`lrfind`)."""
