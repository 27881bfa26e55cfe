"""Which op namespace the functional API calls: ``fastconv`` (compiled CPU/CUDA kernels) unless a
test has switched to ``fastconv_simt`` (fastconv.testing.simt_backend)."""
import torch

current = "fastconv"


def ops():
    return getattr(torch.ops, current)
