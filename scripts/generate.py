"""Sample text from a checkpoint: python scripts/generate.py ckpt_path=<run dir or .ckpt> prompt="The cat"."""

from tinytransformer.runtime.cli import generate_main

if __name__ == "__main__":
    generate_main()
