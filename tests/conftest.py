"""Shared test fixtures: the repository root, one thread per parallel test worker, and skipping `cuda` tests
where no GPU is present."""
import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if "PYTEST_XDIST_WORKER" in os.environ:
    # The workers share the cores: one thread each, here and in the processes the tests start.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The tiny dataset of `tiny_runs`, built once per session."""
    from tiny_runs import write_tiny_dataset
    return write_tiny_dataset(str(tmp_path_factory.mktemp("data") / "tiny"))
