"""Train a SAGAN with the fused self-attention: a thin wrapper over ``python -m sagan_attn.train``.

    python examples/train_sagan.py                                  # digits, 32x32, fused attention
    python examples/train_sagan.py --attention notebook             # the bmm baseline, same model
    python examples/train_sagan.py --data path/to/images --resolution 64 --ch 64 --steps 100000
    python examples/train_sagan.py --resume runs/sagan/checkpoints/last.pt --steps 2000

Every option: ``python examples/train_sagan.py --help``. The run writes sample grids, attention figures,
checkpoints, log.jsonl and summary.json under ``--out`` (default runs/sagan), and prints images/s and peak
memory at the end.
"""
import sys

from sagan_attn.train import main

if __name__ == "__main__":
    sys.exit(main())
