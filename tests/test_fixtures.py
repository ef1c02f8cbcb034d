"""The EDM parity fixtures ship with the repository and the parity tests never skip unnoticed
(tests/conftest.py, tests/fixtures/)."""

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import conftest

#----------------------------------------------------------------------------
# The fixtures are read from the repository itself, and no test reaches out
# of it for them.

def test_fixtures_are_in_the_repository(fixtures_dir):
    assert fixtures_dir == conftest.REPO_ROOT / 'tests' / 'fixtures'
    assert (fixtures_dir / 'README.md').is_file()
    for name in conftest.FIXTURE_FILES:
        if name.endswith('.pt'):
            assert torch.load(fixtures_dir / name, weights_only=True)  # Data: tensors and plain values only.
    tests = Path(__file__).parent
    outside = ['../shared', "'shared' / 'fixtures'", 'SFBD_FIXTURES']  # The old location and its override.
    for path in [*tests.glob('*.py'), tests / 'fixtures' / 'README.md']:
        if path != Path(__file__):
            assert not [s for s in outside if s in path.read_text()], path

#----------------------------------------------------------------------------
# A missing fixture fails, never skips; in CI a skipped parity test fails too.
# Run on a scratch copy of the conftest, whose fixtures directory is empty.

PROBE = '''
import pytest

def test_parity(fixtures_dir):
    pass

@pytest.mark.skip(reason='skipped by a mark')
def test_skipped_parity(fixtures_dir):
    pass

def test_other_skip():
    pytest.skip('no GPU')
'''

def outcomes(tmp_path: Path, ci: bool) -> dict:
    tests = tmp_path / 'tests'
    tests.mkdir(exist_ok=True)
    shutil.copy(conftest.__file__, tests / 'conftest.py')
    (tests / 'test_probe.py').write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != 'CI'}
    if ci:
        env['CI'] = 'true'
    xml = tmp_path / f'report-{ci}.xml'
    subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={xml}',
                    str(tests / 'test_probe.py')], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    result = {}
    for case in ET.parse(xml).getroot().iter('testcase'):
        kinds = [child.tag for child in case if child.tag in ('failure', 'error', 'skipped')]
        result[case.get('name')] = kinds[0] if kinds else 'passed'
    return result

def test_missing_fixtures_fail_and_ci_fails_skipped_parity_tests(tmp_path):
    assert outcomes(tmp_path, ci=False) == dict(test_parity='error', test_skipped_parity='skipped',
                                                test_other_skip='skipped')
    assert outcomes(tmp_path, ci=True) == dict(test_parity='error', test_skipped_parity='error',
                                               test_other_skip='skipped')
