"""Identities and the audit chain on PostgreSQL, the store of a cluster.

The identity and audit tests of this folder run here once more, unchanged, against a live
daemon whose store is a fresh PostgreSQL database in a time zone other than UTC (this
module's ``daemon`` fixture stands in for the SQLite one); then many threads append to
the audit log at once, straight through ``AuditLog``, and the chain must hold with every
record counted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from llmos.security.audit import AuditLog
from llmos.security.rbac import Principal
from llmos.store import open_database
from llmos.store.models import AuditHead, AuditRecord
from pg import fresh_database, postgres_daemon_fixture
from security.test_audit import (  # noqa: F401  (collected here, on PostgreSQL)
    test_concurrent_writes_each_get_a_record_and_the_chain_holds,
    test_writes_and_failed_logins_are_recorded_with_actor_outcome_and_request_id,
)
from security.test_identity import (  # noqa: F401  (collected here, on PostgreSQL)
    test_a_job_gets_its_own_token_through_its_launch_file_never_its_environment,
    test_every_route_but_healthz_needs_a_valid_token,
    test_login_whoami_and_logout_through_the_cli,
    test_scopes_narrow_what_a_token_may_do,
    test_the_first_start_makes_an_administrator_whose_token_is_stored_only_hashed,
    test_tokens_expire_are_revoked_and_die_with_their_user,
    test_users_teams_quotas_and_tokens_through_the_cli,
)

pytestmark = pytest.mark.postgres

THREADS, EACH = 8, 25


# A live daemon on its own PostgreSQL database for each test (the imported tests take it).
daemon = postgres_daemon_fixture(scope="function")


def test_threads_appending_at_once_keep_one_chain_with_every_record(tmp_path):
    admin = Principal(name="admin", user_id=1, is_admin=True)
    with fresh_database("llmos_audit", timezone="Asia/Kolkata") as url:
        db = open_database(url)
        try:
            audit = AuditLog(db, tmp_path / "audit.key", tmp_path / "audit.head")

            def write(worker: int) -> list[int]:
                return [audit.append(f"user-{worker}", "POST /v1/jobs", f"/v1/jobs/{i}",
                                     "201", f"req-{worker}-{i}").id for i in range(EACH)]

            with ThreadPoolExecutor(THREADS) as pool:
                ids = [i for written in pool.map(write, range(THREADS)) for i in written]
            assert len(set(ids)) == THREADS * EACH
            verdict = audit.verify(admin)
            assert (verdict.ok, verdict.records, verdict.first_bad, verdict.message) == (
                True, THREADS * EACH, None, f"{THREADS * EACH} records, chain intact")
            with db.session() as s:
                assert s.get(AuditHead, 1).count == THREADS * EACH
                per_actor = dict(s.execute(select(AuditRecord.actor, func.count())
                                           .group_by(AuditRecord.actor)).all())
            assert per_actor == {f"user-{w}": EACH for w in range(THREADS)}
        finally:
            db.close()
