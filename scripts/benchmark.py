"""Speed figures: python scripts/benchmark.py [--suite training|generation|data|all] [--quick] (see README)."""

from tinytransformer.benchmarks import benchmark_main

if __name__ == "__main__":
    benchmark_main()
