"""Test-wide set-up.

Triton kernels run on the CPU through the interpreter; TRITON_INTERPRET must be set before triton is first
imported, so it is set here, before any test module imports siammae.kernels.
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# No network in tests: weights by name come from a local server that the test starts (model/test_weights.py), and
# a command left to its default weights fails at once with the offline error instead of reaching for the internet.
os.environ.setdefault("SIAMMAE_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real clips and annotations in ../shared/data (skips when a clone lacks them)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """Real data that ships with the tests (tests/fixtures/README.md), laid out as in ../shared/data: the first 6
    frames of DAVIS-2016 blackswan with their annotations, so that the decisive tests on real frames (tracking
    equals evaluation, the presets' inputs bit for bit, DINO's script end to end) never skip."""
    return FIXTURES


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except ImportError:
        has_trt = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (pip install 'siammae[trt]') and a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
