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
# Reference fixtures produced by EDM's own code. They live next to the
# repository in ../shared/fixtures; SFBD_FIXTURES overrides the location.

@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    override = os.environ.get('SFBD_FIXTURES')
    path = Path(override) if override else REPO_ROOT.parent / 'shared' / 'fixtures'
    if not path.is_dir():
        message = f'fixtures directory not found: {path} (set SFBD_FIXTURES)'
        if os.environ.get('CI'):
            pytest.fail(message)  # CI always has them: a missing directory is a broken set-up.
        pytest.skip(message)
    return path
