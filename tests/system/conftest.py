"""Fixtures for the system tests: real PostgreSQL (deploy/pg.sh), the bus and intake daemons.

Run with Debian's python: /usr/bin/python3 -m pytest tests/system
Environment: AC_BIN_DIR (default build/dev), AC_SYSTEST_KEEP=1 keeps the temp dir.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
GEN = os.path.join(HERE, ".gen")


def _generate_protos():
    os.makedirs(GEN, exist_ok=True)
    protos = ["proto/aftercare/v1/ticket.proto", "proto/aftercare/v1/bus.proto",
              "proto/aftercare/v1/dispatch.proto", "proto/aftercare/v1/envelope.proto"]
    subprocess.run(["protoc", "--python_out=" + GEN, "-I", "proto"] + protos,
                   cwd=REPO, check=True)
    for d in (os.path.join(GEN, "aftercare"), os.path.join(GEN, "aftercare", "v1")):
        open(os.path.join(d, "__init__.py"), "a").close()
    if GEN not in sys.path:
        sys.path.insert(0, GEN)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)


_generate_protos()

import helpers  # noqa: E402  (needs the generated classes)

_live_stacks = []


@pytest.fixture(scope="session")
def tmp_root():
    root = tempfile.mkdtemp(prefix="ac-systest-", dir="/tmp")
    os.chmod(root, 0o755)  # the postgres user must traverse it
    print("\nsystem test work dir: %s" % root)
    yield root
    if os.environ.get("AC_SYSTEST_KEEP") != "1":
        shutil.rmtree(root, ignore_errors=True)


def _start_stack(tmp_root, name, **kw):
    workdir = os.path.join(tmp_root, name)
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    stack = helpers.Stack(workdir, name, **kw)
    _live_stacks.append(stack)
    try:
        stack.start()
    except Exception as e:
        tails = "\n".join("--- %s (%s):\n%s" % (d.name, d.log_path, d.log_tail(30))
                          for d in stack.daemons())
        stack.stop()
        _live_stacks.remove(stack)
        raise helpers.StackError("%s stack did not start: %r\n%s" % (name, e, tails)) from e
    return stack


def _stop_stack(stack):
    reports = stack.sanitizer_reports()
    stack.stop()
    if stack in _live_stacks:
        _live_stacks.remove(stack)
    if reports:
        sys.stderr.write("\nWARNING: sanitizer reports in %s logs (%s): %s\n"
                         % (stack.name, stack.log_dir, reports))


@pytest.fixture(scope="session")
def shared_stack(tmp_root):
    stack = _start_stack(tmp_root, "shared")
    yield stack
    _stop_stack(stack)


@pytest.fixture
def stack(shared_stack):
    """The shared stack, revived if an earlier test left a daemon dead."""
    s = shared_stack
    if not s.pg.running:
        s.pg.start()
    if not s.bus.alive():
        s.bus.stop()
        s.bus.start()
        s.bus.wait_ready()
    if not s.intake.alive() or s.intake.healthz() != 200:
        if not s.intake.alive():
            s.intake.stop()
            s.intake.start()
        s.intake.wait_ready()
    return s


@pytest.fixture
def api(stack):
    """api(role) -> a requests session for the shared intake with that role's token."""
    return stack.api


@pytest.fixture
def db(stack):
    return stack.db


@pytest.fixture
def sub(stack):
    """A subscriber on the shared bus output that has been seen to receive."""
    s = stack.subscriber()
    yield s
    s.close()
    if s in stack.subscribers:
        stack.subscribers.remove(s)


@pytest.fixture
def make_stack(tmp_root, request):
    """Factory for private stacks (own PostgreSQL, bus, intake) for destructive tests."""
    made = []

    def make(name=None, **kw):
        """kw: bus_env / intake_env, extra environment for the daemons."""
        name = name or "%s-%d" % (request.node.name.split("[")[0], len(made))
        stack = _start_stack(tmp_root, name, **kw)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        _stop_stack(stack)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for stack in list(_live_stacks):
            for d in stack.daemons():
                state = "running" if d.alive() else "exited %s" % (
                    d.proc.returncode if d.proc else d.exit_codes[-1:] or "-")
                rep.sections.append(("%s/%s log tail (%s, %s)" % (
                    stack.name, d.name, state, d.log_path), d.log_tail(40)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


# Keep SIGPIPE from killing the runner when a daemon closes a socket mid-request.
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
