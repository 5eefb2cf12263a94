"""The model registry on PostgreSQL: an imported model's versions with hashes and cards,
aliases that move and guard removal, files checked against their hashes, and eight
registrations of one model at once getting eight distinct numbers.

The first three are the tests of ``test_registry``, collected here once more against a
live daemon whose store is a fresh PostgreSQL database (this module's ``registry``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from models.test_registry import (  # noqa: F401  (collected here, on PostgreSQL)
    test_a_hugging_face_folder_becomes_a_version_with_hashes_lineage_and_a_card,
    test_aliases_move_and_guard_removal,
    test_registering_checks_files_against_their_hashes,
)
from pg import postgres_daemon_fixture
from security.test_access import register

pytestmark = pytest.mark.postgres

# One live daemon on PostgreSQL for this module (the imported tests take this one).
registry = postgres_daemon_fixture()


def test_versions_registered_at_once_all_get_distinct_numbers(registry):
    c = registry.client
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda _: register(registry, c, "race"), range(8)))
    assert sorted(numbers) == list(range(1, 9))
    model = c.models.get("race")
    assert [v["version"] for v in model["versions"]] == list(range(1, 9))
    c.models.set_alias("race", "production", 8)
    assert c.models.version("race", "production")["version"] == 8
