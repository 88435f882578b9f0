"""vhuman: turn a pretrained StyleGAN into an attribute-controllable virtual-human face generator."""

import os

# Large CPU tensors on transparent huge pages (PyTorch reads this at its first large allocation): a fresh
# activation buffer then costs one page fault per 2 MB instead of per 4 kB. Those faults were a third of
# MobileStyleGAN's time at batch 8 on the CPU (benchmarks/bench_mobilestylegan.py measures both settings).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
