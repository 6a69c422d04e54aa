"""Training: dataset builds, trainers, evaluation and the version registry (filled by later work)."""
