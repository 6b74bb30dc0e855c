"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the duration of a test.

    The kernels and small networks under test run many tiny tensor operations;
    on a shared 2-core machine a second intra-op thread makes each of them an
    order of magnitude slower. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
