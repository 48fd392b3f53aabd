"""SCOT training: `ScotTrainer`, its arguments (`training_args`), the embedding cache, checkpoint folders that are
complete or absent (`checkpoints`), and `train.py` (`scot-train`).

Evaluation on the CIR benchmarks lives in `scot_eval` (`python -m trainers.evaluate` is kept as an alias)."""
