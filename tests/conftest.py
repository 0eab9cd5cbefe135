import logging
import os

import pytest
import torch

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`, as the README's test command runs), the workers share the cores: each gets its share
    of torch threads instead of all of them, and so do the ranks its tests spawn (oversubscribed OpenMP threads
    spin waiting for each other: a 2-rank gloo test ran 8x slower)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(autouse=True)
def default_logger():
    """A job run in this process sets up the dist_darts logger (its own handlers, no propagation to the root):
    each test starts from the default again, so caplog sees its lines whatever ran before it in this worker."""
    yield
    log = logging.getLogger("dist_darts")
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    log.propagate = True
    log.setLevel(logging.NOTSET)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture
def one_thread():
    """Tiny recurrent networks run thousands of small ops; on a loaded machine, OpenMP threads waiting for
    each other make them up to 70x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
