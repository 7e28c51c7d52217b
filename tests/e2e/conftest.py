"""Every test here starts real processes (bots, workers, Redis replicas and sentinels, containers, an earlier
release, the CLI): marked `e2e`."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
