"""raygrain's benchmark suite: every figure beside its baseline, measured in the same run."""
