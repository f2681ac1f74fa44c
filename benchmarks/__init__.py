"""`python -m benchmarks`: speed as ratios against peers measured in the same run."""
