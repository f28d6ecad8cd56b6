"""Evaluate a checkpoint on its val/test splits: python scripts/evaluate.py ckpt_path=<run dir or .ckpt>."""

from tinytransformer.runtime.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
