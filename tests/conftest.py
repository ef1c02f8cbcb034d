"""Shared pytest fixtures."""

import os
import sys
from pathlib import Path

import pytest

# Make the repository root importable however pytest is launched.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#----------------------------------------------------------------------------
# Reference outputs of EDM's own code, shipped with the tests in tests/fixtures
# (its README.md says what each holds). There is no skip path: a missing file
# fails every test that needs it, so the parity tests run wherever the suite
# runs, a fresh clone and CI included.

FIXTURES_DIR = REPO_ROOT / 'tests' / 'fixtures'
FIXTURE_FILES = ('edm-ddpmpp-tiny-net.pt', 'edm-ddpmpp-tiny-snapshot.pkl', 'edm-ddpmpp-tiny-generate.pt')

def check_fixtures(path: Path) -> Path:
    """`path` if it holds every fixture; otherwise the calling test fails (never skips)."""
    missing = [name for name in FIXTURE_FILES if not (path / name).is_file()]
    if missing:
        pytest.fail(f'{path / missing[0]}: EDM\'s reference output is missing; it ships with the repository '
                    '(tests/fixtures), restore it from git', pytrace=False)
    return path

@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    return check_fixtures(FIXTURES_DIR)

#----------------------------------------------------------------------------
# In CI (CI set, as CI services set it) a parity test that skips, by a mark or
# a pytest.skip anywhere, is reported as a failure: CI must have run it.

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get('CI') and 'fixtures_dir' in getattr(item, 'fixturenames', ()):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = 'failed'
        report.longrepr = f'{item.nodeid}: a parity test with EDM\'s outputs skipped in CI ({reason}); CI must run it'
