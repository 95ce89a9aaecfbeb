"""Recovery tests run tiny models on one thread (faster than several on a shared CI core)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
