import os
import tempfile

import pytest

# Keep token caches out of the user's home and shared between tests of one session.
os.environ.setdefault("LMZOO_CACHE", os.path.join(tempfile.gettempdir(), "lmzoo-test-cache"))


@pytest.fixture
def fresh_plugins():
    """A clean plugin state for tests that load extra plugins; restored afterwards."""
    from lmzoo.plugins import reset

    reset()
    yield
    reset()
