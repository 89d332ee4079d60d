"""Suite-wide settings. Area-specific fixtures live beside their tests."""

import os

# 2-core CI machine: one intra-op thread per process keeps parallel/distributed tests from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
