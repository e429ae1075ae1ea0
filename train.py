"""python train.py [--config configs/NAME.yaml] [--set key=value ...] [--workdir DIR] [--resume]

With no arguments: the embedded default (configs/quickstart.yaml: MovieLens-100K + SmolLM2-135M).
"""
from sasrecllm_jax.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
