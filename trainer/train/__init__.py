"""One training run: setup, the loop, EMA, checkpoints and resume, preemption, the run folder, tracking."""
