"""Shared fixtures. ``demo_mirror`` is one small demo cohort written once per test session (read-only for tests)."""

from pathlib import Path

import pytest

from imputmae.demo import write_demo

SMALL_DEMO = {"DEMO-BRCA": 24, "DEMO-UCEC": 12, "DEMO-GBM": 10, "DEMO-LGG": 10}


@pytest.fixture(scope="session")
def demo_mirror(tmp_path_factory) -> Path:
    """A demo mirror (seed 0, 56 patients) in gdc-client layout; do not modify it in tests."""
    out = tmp_path_factory.mktemp("demo") / "mirror"
    write_demo(out, seed=0, n_patients=SMALL_DEMO)
    return out


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): small models on a
    shared 2-core machine run 10-100x slower with two threads per process spinning against other processes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
