import pytest
import torch

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


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
