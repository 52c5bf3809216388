"""Allocator settings: a fused group's temporaries are reused, not page-faulted in every step."""

import platform
import subprocess
import sys

import pytest

from tests._util import REPO

# Page faults are a property of the whole process and depend on what it allocated and freed
# before, so the steps run in a fresh interpreter, as they do in a `tuner` command, not in the
# test process after hundreds of other tests.
_STEPS = """
import resource, torch
from tuner.train.stack import FusedGroup
from tuner.train.config import TrainConfig
from tuner.train.runtime import keep_freed_memory

assert keep_freed_memory()
k, batch = 25, 128  # the weight-decay stage: 5 values x 5 folds, 3.3 MB activations
cfgs = [TrainConfig(hidden=(256, 256), lr=1e-3, batch_size=batch) for _ in range(k)]
group = FusedGroup(cfgs, 90, 10, seeds=list(range(k)))
gen = torch.Generator().manual_seed(0)
x, y = torch.randn(batch, 90, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
with torch.inference_mode():
    for _ in range(3):
        group.train_step(x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        group.train_step(x, y)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_training_steps_do_not_page_fault_after_the_first():
    proc = subprocess.run(
        [sys.executable, "-c", _STEPS], cwd=REPO, capture_output=True, text=True, check=True
    )
    faults = float(proc.stdout.strip().splitlines()[-1])
    # glibc's defaults: ~5,000 faults per step here (fresh mmap or trimmed heap per block).
    assert faults < 100
