"""Presets (sfbd/presets.py): one table for sfbd.rounds and the cluster scripts, each entry with
its source, and the scripts passing a preset's options before the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfbd.presets import PRESETS, preset_args

REPO_ROOT = Path(__file__).resolve().parents[1]

def test_presets_are_the_published_settings():
    assert preset_args('celeba64', 'train') == ['--cond=0', '--arch=ncsnpp', '--batch=256', '--cres=1,2,2,2',
                                                '--lr=2e-4', '--dropout=0.05', '--augment=0.15']
    assert preset_args('celeba64', 'denoise') == ['--steps=40']  # The release's scripts/denoise.sh.
    assert preset_args('cifar10', 'denoise') == ['--steps=18']
    assert preset_args('celeba64', 'online') == ['--steps=40']  # Online SFBD's refreshes denoise alike.
    assert preset_args(None, 'train') == preset_args('none', 'denoise') == []
    with pytest.raises(KeyError):
        preset_args('imagenet', 'train')

def test_docs_name_every_preset_and_its_source():
    listing = subprocess.run([sys.executable, '-m', 'sfbd.presets'], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    table = (REPO_ROOT / 'docs' / 'sfbd.md').read_text()
    cluster = (REPO_ROOT / 'docs' / 'cluster.md').read_text()
    for name, entry in PRESETS.items():
        assert f'{name}:' in listing.stdout and entry['source'] in listing.stdout
        row = next(line for line in table.splitlines() if line.startswith(f'| `{name}` |'))
        assert ' '.join(entry['train']) in row and ' '.join(entry['denoise']) in row
        assert ('watml/SFBD' in row) == name.startswith('celeba') and 'NVlabs/edm' in row
        assert f'`{name}`' in cluster
    assert 'sfbd.md#presets' in cluster

#----------------------------------------------------------------------------
# The scripts, with a stand-in interpreter that records the command lines of
# train.py and denoise.py (and runs `-m sfbd.presets` for real).

@pytest.fixture
def recording_python(tmp_path) -> tuple[Path, Path]:
    log = tmp_path / 'calls.txt'
    wrapper = tmp_path / 'python'
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then exec {sys.executable} "$@"; fi\n'
                       f'printf "%s\\n" "$*" >> {log}\n')
    wrapper.chmod(0o755)
    return wrapper, log

def _script_env(python: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('PRESET', 'STEPS', 'DENOISE_ARGS', 'TRANSFER', 'SLURM_JOB_ID')}
    return dict(env, PYTHON=str(python), NGPUS='0', SFBD_ROOT=str(REPO_ROOT), **extra)

def test_denoise_sh_uses_the_preset_steps(recording_python, tmp_path):
    python, log = recording_python
    (tmp_path / 'noisy').mkdir()
    (tmp_path / 'net.pkl').write_bytes(b'')
    env = _script_env(python, NETWORK=str(tmp_path / 'net.pkl'), NOISY_DATA=str(tmp_path / 'noisy'),
                      OUTDIR=str(tmp_path / 'out'), PRESET='celeba64', DENOISE_ARGS='--batch=8')
    subprocess.run(['bash', str(REPO_ROOT / 'scripts' / 'denoise.sh')], env=env, check=True, capture_output=True)
    (call,) = log.read_text().splitlines()
    assert call.endswith('--steps=40 --batch=8 --shard=0/1')
    log.unlink()
    subprocess.run(['bash', str(REPO_ROOT / 'scripts' / 'denoise.sh')], env=dict(env, STEPS='12'), check=True, capture_output=True)
    assert '--steps=40 --steps=12' in log.read_text()  # STEPS comes after the preset's and wins.

def test_train_sh_uses_the_preset(recording_python, tmp_path):
    python, log = recording_python
    (tmp_path / 'clean').mkdir()
    env = _script_env(python, CLEAN_DATA=str(tmp_path / 'clean'), OUTDIR=str(tmp_path / 'run'), PRESET='cifar10')
    subprocess.run(['bash', str(REPO_ROOT / 'scripts' / 'train.sh'), '--duration=1'], env=env, check=True, capture_output=True)
    (call,) = log.read_text().splitlines()
    assert call.endswith('--cond=0 --arch=ddpmpp --batch=512 --cres=2,2,2 --lr=1e-3 --dropout=0.13 --augment=0.12 --duration=1')

#----------------------------------------------------------------------------
