"""The single-node cluster most tests in this folder deploy onto (see ``ray_cli``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray_cli import RayCliCluster, ray_cli_cluster


@pytest.fixture(scope="module")
def head_only(tmp_path_factory) -> Iterator[RayCliCluster]:
    """``ray start --head`` in a temp dir, 8 logical CPUs (so the production layout's CPU
    reservations fit a 2-core machine), no GPU."""
    # Short: Ray's socket paths live under the temp dir and must stay under 107 bytes.
    with ray_cli_cluster(tmp_path_factory.mktemp("rc"), [(8, 0)]) as cluster:
        yield cluster
