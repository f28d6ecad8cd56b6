"""Speed figures: python scripts/benchmark.py [--suite training|generation|data|all] [--quick] (docs/benchmark.md)."""

from benchmarks import benchmark_main  # scripts/benchmarks/: outside the installed package

if __name__ == "__main__":
    benchmark_main()
