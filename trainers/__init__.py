"""SCOT training and evaluation: ScotTrainer, the embedding cache, `train.py`, CIR benchmarks and metrics."""
