"""`python tests/stock_ddp_spawn_cli.py <overrides>`: scripts/train.py with runtime/ddp.py's SpawnDDPStrategy
replaced by the string Lightning reads as its own ddp_spawn (tests/test_stock_ddp_spawn.py)."""

import sys

from tinytransformer.runtime import ddp
from tinytransformer.runtime.cli import train_main

ddp.SpawnDDPStrategy = lambda: "ddp_spawn"
if __name__ == "__main__":  # not in the spawned workers, which import this file again
    sys.argv[0] = "train.py"
    train_main()
