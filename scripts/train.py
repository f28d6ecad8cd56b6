"""Train a TinyTransformer: python scripts/train.py [key=value ...] (see README.md)."""

from tinytransformer.runtime.cli import train_main

if __name__ == "__main__":
    train_main()
