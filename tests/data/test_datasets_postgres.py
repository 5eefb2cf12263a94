"""Datasets on PostgreSQL: an ingest job registers its version, a registration checks its
artifacts, and eight registrations at once get eight distinct numbers.

The tests are those of ``test_datasets_live``, collected here once more against a live
daemon whose store is a fresh PostgreSQL database (this module's ``shared_daemon``); on
PostgreSQL two writers really run at once, so the version race is a race here.
"""

from __future__ import annotations

import pytest

from data.test_datasets_live import (  # noqa: F401  (collected here, on PostgreSQL)
    messy,
    test_ingest_with_the_cli_then_read_the_version_every_way,
    test_registering_a_version_checks_its_artifacts,
    test_versions_registered_at_once_all_get_distinct_numbers,
)
from pg import postgres_daemon_fixture

pytestmark = pytest.mark.postgres

# One live daemon on PostgreSQL for this module (the imported tests take this one).
shared_daemon = postgres_daemon_fixture()
