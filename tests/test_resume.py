"""Resuming and transferring: EDM's training states (read as data), option checks, the learning-rate
and EMA schedule carried over by a resume (training/resume.py, torch_utils/edm_state.py, train.py),
and --transfer between networks of different label dimensions (training/training_loop.py)."""

from __future__ import annotations

import json
import math
import os
import pickletools
import unittest.mock
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
from tools import train_setup
from training.augment import AUGMENTATIONS
import dnnlib.util
from dnnlib.util import UserError
from torch_utils import edm_state, misc, persistence
from training import resume

from sfbd_helpers import make_image_dataset

TINY = ['--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=8', '--tick=1', '--snap=1', '--dump=1', '--seed=1',
        '--workers=1', '--cache=0']
KIMG = 5  # Progress of the EDM state, in its file name.

#----------------------------------------------------------------------------
# An EDM run directory for the network of TINY on an 8x8 dataset, as EDM's
# train.py and training loop leave it: training_options.json in EDM's layout,
# network-snapshot-000005.pkl (the EMA) and training-state-000005.pt, which
# is `torch.save(dict(net=net, optimizer_state=...))` of the whole module.

class Persistent:
    """Pickles as EDM's persistence module pickles a network: `_reconstruct_persistent_obj(meta)`."""

    def __init__(self, meta: dict):
        self.meta = meta

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,))

class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def with_edm_numpy_scalars(net: torch.nn.Module) -> torch.nn.Module:
    """Give `net` the numpy scalars EDM's SongUNet holds: EDM computes the blocks' skip_scale as
    `np.sqrt(0.5)` and the attention layers' init_weight as `np.sqrt(0.2)` (numpy float64), which
    stay in the blocks' attributes and recorded constructor arguments. torch.save's pickle protocol 2
    writes their bytes through `_codecs.encode`."""
    numpy_value = {math.sqrt(0.5): np.sqrt(0.5), math.sqrt(0.2): np.sqrt(0.2)}

    def swap(value):
        if isinstance(value, dict):
            return type(value)({k: swap(v) for k, v in value.items()})
        if isinstance(value, float) and value in numpy_value:
            return numpy_value[value]
        return value
    for module in net.modules():
        if hasattr(module, 'skip_scale'):
            module.skip_scale = swap(module.skip_scale)
        if hasattr(module, '_init_kwargs'):
            module._init_kwargs = swap(module._init_kwargs)
    return net

def tiny_network_kwargs() -> dict:
    return dict(train_setup.ARCHITECTURES['ddpmpp'], class_name='training.networks.EDMPrecond', model_channels=16,
                channel_mult=[1], augment_dim=9, dropout=0.13, use_fp16=False)

def edm_training_options(data: Path, run_dir: Path, lr: float) -> dict:
    # What EDM's train.py writes for `--data=DATA --arch=ddpmpp --cbase=16 --cres=1 --batch=8 --lr=LR`.
    return dict(
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=str(data), use_labels=False,
                            xflip=False, cache=True, resolution=8, max_size=16),
        data_loader_kwargs=dict(pin_memory=True, num_workers=1, prefetch_factor=2),
        network_kwargs=tiny_network_kwargs(), loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=lr, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs=dict(class_name='training.augment.AugmentPipe', p=0.12, **AUGMENTATIONS),
        total_kimg=200000, ema_halflife_kimg=500, batch_size=8, batch_gpu=None, loss_scaling=1,
        cudnn_benchmark=True, kimg_per_tick=50, snapshot_ticks=50, state_dump_ticks=500, seed=7, run_dir=str(run_dir))

def make_edm_run(root: Path, marker: Path, lr: float = 2e-3) -> dict:
    """Write an EDM run directory under `root`; returns its parts for comparison."""
    data = root / 'ds8'
    make_image_dataset(str(data), 16)
    run_dir = root / '00000-ds8-uncond-ddpmpp-edm-gpus1-batch8-fp32'
    run_dir.mkdir()
    (run_dir / 'training_options.json').write_text(json.dumps(edm_training_options(data, run_dir, lr), indent=2))

    torch.manual_seed(11)
    kwargs = tiny_network_kwargs()
    net = dnnlib.util.construct_class_by_name(**kwargs, img_resolution=8, img_channels=3, label_dim=0).train().requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(2):  # Moments that differ from a fresh optimizer's, weights away from the initial ones.
        optimizer.zero_grad()
        x = torch.randn(2, 3, 8, 8)
        net(x, torch.full([2], 0.7), None, augment_labels=torch.zeros(2, 9)).sub(x).square().mean().backward()
        optimizer.step()
    # EDM's torch.save of the whole module (protocol 2, numpy scalars in the blocks): each persistent
    # module pickles as a reconstruction call carrying its module's source, here source that would
    # leave a marker file if anything ran it.
    hostile_source = f'open({str(marker)!r}, "w").write("ran")\n'
    with unittest.mock.patch.object(persistence, '_module_source', lambda cls: hostile_source):
        torch.save(dict(net=with_edm_numpy_scalars(net), optimizer_state=optimizer.state_dict()),
                   run_dir / f'training-state-{KIMG:06d}.pt')

    ema = dnnlib.util.construct_class_by_name(**kwargs, img_resolution=8, img_channels=3, label_dim=0).eval().requires_grad_(False)
    persistence.save_network_pickle(str(run_dir / f'network-snapshot-{KIMG:06d}.pkl'),
                                    dict(ema=ema, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    names = [name for name, _ in net.named_parameters()]
    return dict(data=data, run_dir=run_dir, net={k: v.detach().clone() for k, v in net.state_dict().items()},
                ema={k: v.clone() for k, v in ema.state_dict().items()},
                moments={names[i]: s for i, s in optimizer.state_dict()['state'].items()})

@pytest.fixture
def edm_run(tmp_path) -> dict:
    return make_edm_run(tmp_path, tmp_path / 'pwned')

def invoke(args: list) -> object:
    return CliRunner().invoke(train.main, [str(a) for a in args])

def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith('Error:')]

#----------------------------------------------------------------------------
# The file is EDM's layout: the module pickled under EDM's persistence call,
# tensors as torch.save storages, no class of the repository named.

def test_edm_state_layout_and_reader(edm_run, tmp_path):
    path = edm_run['run_dir'] / f'training-state-{KIMG:06d}.pt'
    with zipfile.ZipFile(path) as z:
        (pkl,) = [n for n in z.namelist() if n.endswith('/data.pkl')]
        data = z.read(pkl)
    globals_named = {arg for op, arg, _ in pickletools.genops(data) if op.name == 'GLOBAL'}
    assert 'torch_utils.persistence _reconstruct_persistent_obj' in globals_named
    assert '_codecs encode' in globals_named  # Protocol 2's bytes of the numpy scalars, as in EDM's DDPM++ states.
    assert not any(g.startswith('training.') for g in globals_named)  # Classes only by name, in the records.
    assert str(tmp_path / 'pwned').encode() in data  # The source the file carries (never run).
    assert edm_state.is_edm_training_state(str(path))

    state = edm_state.load_edm_training_state(str(path))
    assert state.kimg == KIMG and state.class_name == 'EDMPrecond'
    assert state.snapshot_path == str(edm_run['run_dir'] / f'network-snapshot-{KIMG:06d}.pkl')
    assert state.init_kwargs['model_channels'] == 16 and state.init_kwargs['augment_dim'] == 9
    assert set(state.tensors) == set(edm_run['net'])
    assert all(torch.equal(state.tensors[k], v) for k, v in edm_run['net'].items())
    assert not (tmp_path / 'pwned').exists()

#----------------------------------------------------------------------------
# train.py --resume=<EDM state>: the first step starts from the state's
# weights and Adam moments and the snapshot's EMA, at the kimg of the name;
# the schedule is EDM's run's (its lr); the embedded source never runs.

def test_resume_edm_run(edm_run, tmp_path, monkeypatch):
    first = {}
    original_step = torch.optim.Adam.step
    original_restore = resume.restore_edm_state

    def capture_step(self, *args, **kwargs):
        if 'net' not in first:  # The weights and moments the first step starts from.
            params = [p for group in self.param_groups for p in group['params']]
            first['net'] = [p.detach().clone() for p in params]
            first['moments'] = [{k: v.clone() for k, v in self.state[p].items()} for p in params]
        return original_step(self, *args, **kwargs)

    def capture_restore(path, net, ema, optimizer):
        cur_nimg = original_restore(path, net, ema, optimizer)
        first['names'] = [name for name, _ in net.named_parameters()]
        first['ema'] = {k: v.clone() for k, v in ema.state_dict().items()}
        return cur_nimg

    monkeypatch.setattr(torch.optim.Adam, 'step', capture_step)
    monkeypatch.setattr(resume, 'restore_edm_state', capture_restore)
    outdir = tmp_path / 'out'
    state_path = edm_run['run_dir'] / f'training-state-{KIMG:06d}.pt'
    duration = (KIMG * 1000 + 8) / 1e6  # One step of 8 images past the state.
    result = invoke(['--outdir', outdir, '--data', edm_run['data'], *TINY, f'--duration={duration}', '--resume', state_path])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / 'pwned').exists()

    # First weights: the state's; first Adam moments: the state's; first EMA: the snapshot's.
    for name, value in zip(first['names'], first['net']):
        assert torch.equal(value, edm_run['net'][name]), name
    for name, moments in zip(first['names'], first['moments']):
        for key in ('exp_avg', 'exp_avg_sq', 'step'):
            assert torch.equal(moments[key], edm_run['moments'][name][key]), (name, key)
    assert set(first['ema']) == set(edm_run['ema'])
    assert all(torch.equal(first['ema'][k], v) for k, v in edm_run['ema'].items())

    # kimg continues from the file name; the run writes its own state at 5.008 kimg.
    (run_dir,) = outdir.iterdir()
    log = (run_dir / 'log.txt').read_text()
    assert f'Continuing EDM\'s run at {KIMG} kimg' in log
    stats = [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]
    assert stats[0]['Progress/kimg']['mean'] == pytest.approx(KIMG + 0.008)
    state = torch.load(run_dir / f'training-state-{KIMG:06d}.pt', map_location='cpu', weights_only=True)
    assert state['cur_nimg'] == KIMG * 1000 + 8
    # EDM's run trained with lr 2e-3 (its training_options.json); no --lr was given, so it stays.
    assert state['schedule'] == dict(lr=2e-3, lr_rampup_kimg=10000, ema_halflife_kimg=500, ema_rampup_ratio=0.05)
    assert 'Schedule of the resumed run: lr 0.002' in log
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['optimizer_kwargs']['lr'] == 2e-3

def test_resume_edm_run_directory_announces_changes(edm_run, tmp_path):
    # A run directory means its newest state; a changed batch size or dataset is announced.
    result = invoke(['--outdir', tmp_path / 'out', '--data', edm_run['data'], *TINY, '--batch=4', '--resume',
                     edm_run['run_dir'], '-n'])
    assert result.exit_code == 0, result.output
    assert f'training-state-{KIMG:06d}.pt' in result.output
    assert '--batch differs from the resumed run: 8 there, 4 now.' in result.output

@pytest.mark.parametrize('option, what', [('--cbase=32', 'model_channels 16 there, 32 now'),
                                          ('--precond=vp', 'another network'),
                                          ('--augment=0', 'augment_dim 9 there, None now')])
def test_resume_edm_run_with_another_network_is_refused(edm_run, tmp_path, option, what):
    result = invoke(['--outdir', tmp_path / 'out', '--data', edm_run['data'], *TINY, option, '--resume',
                     edm_run['run_dir'] / f'training-state-{KIMG:06d}.pt'])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert line.startswith(f'Error: --resume={edm_run["run_dir"]}') and 'the run was trained with' in line and what in line
    assert not (tmp_path / 'out').exists()

def test_resume_edm_state_needs_its_snapshot(edm_run, tmp_path):
    (edm_run['run_dir'] / f'network-snapshot-{KIMG:06d}.pkl').unlink()
    result = invoke(['--outdir', tmp_path / 'out', '--data', edm_run['data'], *TINY, '--resume', edm_run['run_dir']])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert f'network-snapshot-{KIMG:06d}.pkl' in line and 'EMA' in line
    assert not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
# Hostile states: a reduce to os.system is refused before anything runs.

def test_hostile_state_runs_nothing(edm_run, tmp_path):
    marker = tmp_path / 'pwned-system'
    path = tmp_path / 'training-state-000009.pt'
    torch.save(dict(net=RunsCode(marker), optimizer_state={}), path)
    with pytest.raises(UserError, match=r'refusing to load "(os|posix)\.system"'):
        edm_state.load_edm_training_state(str(path))
    # Through train.py: the run directory's newest state hides the call inside the network's record.
    hidden = Persistent(dict(type='class', version=6, class_name='EDMPrecond', module_src='', state=dict(x=RunsCode(marker))))
    torch.save(dict(net=hidden, optimizer_state={}), edm_run['run_dir'] / 'training-state-000009.pt')
    result = invoke(['--outdir', tmp_path / 'out', '--data', edm_run['data'], *TINY, '--resume', edm_run['run_dir']])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert 'refusing to load' in line and 'system' in line
    assert not marker.exists() and not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'out').exists()

# A file that torch.load reads but that is no state at all (a bare tensor) is
# refused in one line, with no warning of torch's indexing before it.
def test_a_bare_tensor_is_not_a_training_state(edm_run, tmp_path):
    torch.save(torch.zeros(3), tmp_path / 'bare.pt')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = invoke(['--outdir', tmp_path / 'out', '--data', edm_run['data'], *TINY, '--resume', tmp_path / 'bare.pt'])
    assert result.exit_code == 1 and 'bare.pt: not a training state of this project' in result.output
    assert not [w for w in caught if 'indexing' in str(w.message)] and not (tmp_path / 'out').exists()

def test_repository_states_stay_weights_only(tmp_path):
    # This repository's states are never read through the data-only pickle reader: they load with
    # torch.load(weights_only=True), which a pickled module fails.
    from training.training_loop import _load_state
    path = tmp_path / 'training-state-000001.pt'
    torch.save(dict(format='sfbd-training-state-v1', net=RunsCode(tmp_path / 'x')), path)
    assert not edm_state.is_edm_training_state(str(path))
    with pytest.raises(UserError, match='not a training state of this project'):
        _load_state(str(path))
    assert not (tmp_path / 'x').exists()

#----------------------------------------------------------------------------
# The schedule survives a resume: the state records it; options given on the
# command line that differ replace it and are announced; defaults never do.

@pytest.fixture(scope='module')
def own_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('own')
    make_image_dataset(str(root / 'ds8'), 16)
    result = invoke(['--outdir', root / 'run', '--nosubdir', '--data', root / 'ds8', *TINY, '--duration=0.000016',
                     '--lr=2e-3', '--lr-rampup=7', '--ema=0.004', '--ema-rampup=0.1'])
    assert result.exit_code == 0, result.output
    return root

def test_state_records_the_schedule(own_run):
    state = torch.load(own_run / 'run' / 'training-state-000000.pt', map_location='cpu', weights_only=True)
    assert state['schedule'] == dict(lr=2e-3, lr_rampup_kimg=7, ema_halflife_kimg=4, ema_rampup_ratio=0.1)

def test_resume_restores_the_schedule(own_run, tmp_path):
    # The state alone (no training_options.json beside it): the schedule comes from the state.
    state_path = tmp_path / 'training-state-000000.pt'
    state_path.write_bytes((own_run / 'run' / 'training-state-000000.pt').read_bytes())
    result = invoke(['--outdir', tmp_path / 'out', '--data', own_run / 'ds8', *TINY, '--duration=0.001',
                     '--resume', state_path, '-n'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output[result.output.index('{'):result.output.index('\n}') + 2])
    assert options['optimizer_kwargs']['lr'] == 2e-3 and options['lr_rampup_kimg'] == 7
    assert options['ema_halflife_kimg'] == 4 and options['ema_rampup_ratio'] == 0.1
    assert 'Schedule of the resumed run: lr 0.002, lr_rampup_kimg 7 kimg, ema_halflife_kimg 4 kimg, ' \
           'ema_rampup_ratio 0.1.' in result.output
    assert 'given' not in result.output

def test_explicit_schedule_options_are_announced(own_run, tmp_path):
    result = invoke(['--outdir', tmp_path / 'out', '--data', own_run / 'ds8', *TINY, '--duration=0.001',
                     '--resume', own_run / 'run', '--lr=5e-4', '--ema-rampup=0', '--lr-rampup=7', '-n'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output[result.output.index('{'):result.output.index('\n}') + 2])
    assert options['optimizer_kwargs']['lr'] == 5e-4 and options['ema_rampup_ratio'] is None
    assert options['lr_rampup_kimg'] == 7 and options['ema_halflife_kimg'] == 4
    assert '--lr given: lr is 0.0005 from here on, instead of the 0.002 the run was trained with.' in result.output
    assert '--ema-rampup given: ema_rampup_ratio is none from here on, instead of the 0.1' in result.output
    assert '--lr-rampup given' not in result.output  # The same value as recorded: nothing to announce.

def test_rerun_into_a_run_directory_with_another_network_is_refused(own_run):
    # Resuming this repository's run by rerunning into its directory: the same checks as for EDM's.
    result = invoke(['--outdir', own_run / 'run', '--nosubdir', '--data', own_run / 'ds8', *TINY, '--cbase=32', '-n'])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert line.startswith(f'Error: --outdir={own_run / "run"} (its newest training state): the run was trained with '
                           'another network') and 'model_channels 16 there, 32 now' in line

def test_resolve_schedule_units():
    given = dict(lr=1e-3, lr_rampup_kimg=10000, ema_halflife_kimg=500, ema_rampup_ratio=0.05)
    recorded = dict(lr=2e-4, lr_rampup_kimg=0, ema_halflife_kimg=500, ema_rampup_ratio=None)
    values, notes = resume.resolve_schedule(given, recorded, explicit=set())
    assert values == recorded and len(notes) == 1
    values, notes = resume.resolve_schedule(given, None, explicit={'lr'})
    assert values == given and 'records no' in notes[0]
    # EDM's training_options.json has no warm-up entry (fixed at 10 Mimg) and records the ramp-up
    # ratio only as the None of --transfer.
    assert resume.schedule_of_options(dict(optimizer_kwargs=dict(lr=1e-3), ema_halflife_kimg=500)) == \
        dict(lr=1e-3, lr_rampup_kimg=10000, ema_halflife_kimg=500, ema_rampup_ratio=0.05)
    assert resume.schedule_of_options(dict(optimizer_kwargs=dict(lr=1e-3), ema_halflife_kimg=500,
                                           ema_rampup_ratio=None))['ema_rampup_ratio'] is None

#----------------------------------------------------------------------------
# --transfer like EDM: every tensor of the same name and shape is copied, the
# others keep their initial values and are listed. EDM's class-conditional
# fixture (16x16, 10 classes) into unconditional training, and into training
# with 5 classes; an unconditional pickle into 10-class training.

def fixture_arch(fixtures_dir: Path) -> dict:
    arch = torch.load(fixtures_dir / 'edm-ddpmpp-tiny-net.pt', weights_only=True)['kwargs']
    return {k: v for k, v in arch.items() if k not in ('img_resolution', 'img_channels', 'label_dim')}

@pytest.mark.parametrize('source_classes, target_classes', [(10, 0), (10, 5), (0, 10)])
def test_transfer_between_label_dimensions(source_classes, target_classes, fixtures_dir, tmp_path, capsys):
    from training.training_loop import training_loop
    arch = fixture_arch(fixtures_dir)
    source_path = str(fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl')
    source = persistence.load_network(source_path)
    if source_classes == 0:  # The fixture's network without its label embedding.
        uncond = dnnlib.util.construct_class_by_name(class_name='training.networks.EDMPrecond', img_resolution=16,
                                              img_channels=3, label_dim=0, **arch)
        assert misc.copy_params_and_buffers(source, uncond) == []
        source_path = str(tmp_path / 'uncond.pkl')
        persistence.save_network_pickle(source_path, dict(ema=uncond.eval(), loss_fn=None, augment_pipe=None, dataset_kwargs={}))
        source = persistence.load_network(source_path)
    data = tmp_path / 'data'
    make_image_dataset(str(data), 10, resolution=16, num_classes=target_classes)  # Every class present.
    network_kwargs = dict(class_name='training.networks.EDMPrecond', dropout=0.13, use_fp16=False, **arch)
    # One step at learning rate 0 (the warm-up starts at 0) leaves the weights as they were copied.
    status = training_loop(
        run_dir=str(tmp_path), seed=0, batch_size=4, total_kimg=0.004, ema_rampup_ratio=None, device='cpu',
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=str(data), use_labels=target_classes > 0),
        network_kwargs=network_kwargs, loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs=dict(class_name='training.augment.AugmentPipe', p=0.12, **AUGMENTATIONS),
        resume_pkl=source_path)
    assert status == 'finished'
    out = capsys.readouterr().out
    ema = persistence.load_network(str(tmp_path / 'network-snapshot-000000.pkl')).state_dict()
    src = source.state_dict()
    torch.manual_seed(0)  # The loop's initial weights (seeded with --seed).
    initial = dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution=16, img_channels=3,
                                           label_dim=target_classes).state_dict()
    kept = [k for k in ema if k not in src or src[k].shape != ema[k].shape]
    # The label embedding: its weight has another shape (or is missing), its bias fits when present.
    assert kept == {(10, 0): [], (10, 5): ['model.map_label.weight'],
                    (0, 10): ['model.map_label.weight', 'model.map_label.bias']}[(source_classes, target_classes)]
    for k in ema:
        assert torch.equal(ema[k], initial[k] if k in kept else src[k]), k
    assert f'Copied {len(ema) - len(kept)} of {len(ema)} tensors from the pickle.' in out
    if kept:
        shape_there = f'[32, {source_classes}] in the pickle' if source_classes else 'not in the pickle'
        assert f'  model.map_label.weight [32, {target_classes}]: {shape_there}' in out
    if source_classes and not target_classes:
        assert 'Not used from the pickle (2): model.map_label.weight, model.map_label.bias' in out

# Weights of another preconditioning are copied as EDM copies them, and the log says so; an "ema" that
# is a bare U-Net is one line.
def test_transfer_from_another_preconditioning_is_announced(fixtures_dir, tmp_path, capsys):
    from training.training_loop import training_loop
    arch = fixture_arch(fixtures_dir)
    def save(name, class_name, **kwargs):
        net = dnnlib.util.construct_class_by_name(class_name=class_name, img_resolution=16, **kwargs)
        persistence.save_network_pickle(str(tmp_path / name), dict(ema=net.eval(), loss_fn=None, augment_pipe=None,
                                                                   dataset_kwargs={}))
        return str(tmp_path / name)
    vp = save('vp.pkl', 'training.networks.VPPrecond', img_channels=3, label_dim=0, **arch)
    bare = save('bare.pkl', 'training.networks.SongUNet', in_channels=3, out_channels=3, label_dim=0,
                **{k: v for k, v in arch.items() if k != 'model_type'})
    make_image_dataset(str(tmp_path / 'data'), 4, resolution=16)
    def train(source, run_dir):
        return training_loop(
            run_dir=str(tmp_path / run_dir), seed=0, batch_size=4, total_kimg=0.004, ema_rampup_ratio=None,
            device='cpu', dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=str(tmp_path / 'data')),
            network_kwargs=dict(class_name='training.networks.EDMPrecond', use_fp16=False, **arch),
            loss_kwargs=dict(class_name='training.loss.EDMLoss'), augment_kwargs=None,
            optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
            resume_pkl=source)
    assert train(vp, 'a') == 'finished'
    assert "Note: the pickle's network is VPPrecond, this run's EDMPrecond" in capsys.readouterr().out
    with pytest.raises(UserError, match='the "ema" of .*bare.pkl is a SongUNet, not a preconditioned network'):
        train(bare, 'b')

def test_transfer_of_another_channel_count_is_refused(fixtures_dir, tmp_path):
    data = tmp_path / 'gray'
    make_image_dataset(str(data), 4, channels=1, resolution=16)
    result = invoke(['--outdir', tmp_path / 'out', '--data', data, *TINY, '--transfer',
                     fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl'])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert '16x16 network with 3 channels' in line and 'needs 16x16 with 1 channels' in line
    assert not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
