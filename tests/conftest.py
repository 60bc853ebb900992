import os
import tempfile

import pytest

# Keep token caches out of the user's home and shared between tests of one session.
os.environ.setdefault("LMZOO_CACHE", os.path.join(tempfile.gettempdir(), "lmzoo-test-cache"))
# Hugging Face datasets: Arrow copies out of the user's home, and never a network attempt.
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "lmzoo-test-cache", "hf-datasets"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def fresh_plugins():
    """A clean plugin state for tests that load extra plugins; restored afterwards."""
    from lmzoo.hooks import reset

    reset()
    yield
    reset()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared CPU two threads per
    process make torch several times slower; restore the setting afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
