"""Fixtures every test folder can use: live daemons (see live.py), offline real models
(see offline_models.py)."""

from live import daemon, shared_daemon  # noqa: F401
from offline_models import smollm2_dir  # noqa: F401

import os  # noqa: E402

import pytest  # noqa: E402

# Folders whose modules share something of the machine's and so never run at the same time
# on two pytest-xdist workers: each module of tests/cluster starts a Ray cluster and cleans
# up the node homes in /tmp that it finds new.
SERIAL_FOLDERS = {"cluster"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N`` (scripts/test), a test module is one unit of work, so its
    module-scoped fixtures (a live daemon, a fine-tuned model) are made once, on one worker;
    each folder in SERIAL_FOLDERS is one unit. (xdist's ``--dist loadgroup`` would say the
    same with marks, but pytest 9 ignores the node ids it rewrites for it.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            folder = path.split("/")[1] if path.count("/") > 1 else ""
            return f"tests/{folder}" if folder in SERIAL_FOLDERS else path

    return ModuleScheduling(config, log)


@pytest.fixture(autouse=True, scope="session")
def _files_shared_with_jobs(tmp_path_factory):
    """Jobs run in a sandbox, as their team's system user (not root), and see a test's
    folders only where they are bound in. pytest makes its temporary folders 0700 (root
    only) and a root umask makes the rest unwritable to that user; tests hand jobs such
    folders (markers, gates, corpora), so here they are shared: folders tests make are
    open to the jobs' users, as a shared folder of a real installation would be."""
    original = pytest.TempPathFactory.mktemp

    def mktemp(self, basename, numbered=True):
        path = original(self, basename, numbered)
        path.chmod(0o777)
        return path

    pytest.TempPathFactory.mktemp = mktemp
    old_umask = os.umask(0)
    # safetensors makes its files 0600 whatever the umask: the model folders tests write
    # would be closed to the jobs that import or train them.
    import safetensors.torch as st

    serialize = st.serialize_file

    def serialize_shared(tensors, filename, metadata=None):
        serialize(tensors, filename, metadata)
        os.chmod(filename, 0o666)

    st.serialize_file = serialize_shared
    yield
    st.serialize_file = serialize
    os.umask(old_umask)
    pytest.TempPathFactory.mktemp = original
