"""Compare runs by setting (table + val curves): python scripts/compare_runs.py <sweep dir, run dir or logs/>."""

from tinytransformer.comparison.compare import compare_main

if __name__ == "__main__":
    compare_main()
