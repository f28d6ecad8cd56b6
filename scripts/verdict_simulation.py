"""The seed sweep's false-verdict rate and power on synthetic results: python scripts/verdict_simulation.py
[trials] [paired spread in nats] (docs/verdicts.md shows its output and the settings it uses)."""

import sys

from tinytransformer.comparison.seed_rounds import simulation_main

if __name__ == "__main__":
    simulation_main(sys.argv[1:])
