"""Network pickles: EDM's layout, the data-only loader, hostile files and clear errors."""

import codecs
import functools
import math
import http.server
import os
import pickle
import re
import threading
import warnings

import numpy as np
import pytest
import torch

import dnnlib.util
from dnnlib.util import UserError, cached_path_for_url, current_umask
from torch_utils import persistence
from training import networks

#----------------------------------------------------------------------------

def tiny_net(**overrides) -> torch.nn.Module:
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=0, model_type='SongUNet', model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    kwargs.update(overrides)
    torch.manual_seed(0)
    return networks.EDMPrecond(**kwargs).eval().requires_grad_(False)

def outputs(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    labels = torch.eye(net.label_dim)[[0, 1]] if net.label_dim else None
    return net(x, torch.tensor([0.5, 3.0]), labels)

class Persistent:
    """Pickles as a persistent object with the given record, the way EDM's pickles look."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,))

#----------------------------------------------------------------------------
# EDM's own pickle (with its embedded source removed) loads as data.

def test_loads_edm_fixture_snapshot(fixtures_dir):
    data = persistence.load_network_pickle(str(fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl'))
    assert set(data) >= {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    net = data['ema']
    assert type(net).__name__ == 'EDMPrecond' and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert type(data['loss_fn']).__name__ == 'EDMLoss' and data['augment_pipe'] is None
    assert data['dataset_kwargs']['path'] == 'fixture.zip'

    reference = torch.load(fixtures_dir / 'edm-ddpmpp-tiny-net.pt', weights_only=True)
    state = net.state_dict()
    assert set(state) == set(reference['state_dict'])
    assert all(torch.equal(state[k], v) for k, v in reference['state_dict'].items())
    for i, s in enumerate(reference['sigmas']):
        sigma = net.round_sigma(torch.full([4], s, dtype=torch.float64))
        out = net(reference['x'] * s, sigma, reference['labels'])
        torch.testing.assert_close(out, reference['outputs'][i], rtol=1e-4, atol=1e-5)

# Loading says nothing on stderr. Older torch (2.1) read the storages through
# TypedStorage and warned, once per process, that it is deprecated.
def test_loading_warns_of_nothing(fixtures_dir):
    always_warn = getattr(torch.storage, '_set_always_warn_typed_storage_removal', None)
    previous = torch.storage._get_always_warn_typed_storage_removal() if always_warn else None
    if always_warn:
        always_warn(True)  # Not only once per process: earlier tests may have had the warning.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            persistence.load_network_pickle(str(fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl'))
    finally:
        if always_warn:
            always_warn(previous)

#----------------------------------------------------------------------------
# Round trip through this project's writer, for every preconditioner and backbone.

@pytest.mark.parametrize('precond, overrides', [
    ('EDMPrecond', dict(label_dim=4, augment_dim=9)),
    ('VPPrecond', dict(embedding_type='positional')),
    ('VEPrecond', dict(embedding_type='fourier', encoder_type='residual', channel_mult_noise=2,
                       resample_filter=[1, 3, 3, 1])),
    ('iDDPMPrecond', dict(model_type='DhariwalUNet', channel_mult=[1, 2], attn_resolutions=[4], num_blocks=1)),
])
def test_round_trip(tmp_path, precond, overrides):
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=0, model_type='SongUNet', model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    kwargs.update(overrides)
    torch.manual_seed(0)
    net = getattr(networks, precond)(**kwargs).eval().requires_grad_(False)
    path = tmp_path / 'network-snapshot-000000.pkl'
    persistence.save_network_pickle(str(path), dict(ema=net, loss_fn=None, augment_pipe=None,
                                                    dataset_kwargs=dict(path='x.zip')))
    loaded = persistence.load_network_pickle(str(path))
    assert loaded['dataset_kwargs'] == dict(path='x.zip')
    assert type(loaded['ema']) is type(net)
    torch.testing.assert_close(outputs(loaded['ema']), outputs(net), rtol=0, atol=0)

def test_written_layout_is_edms(tmp_path):
    # The file records the class name, its constructor arguments and the module source, like EDM.
    path = tmp_path / 'net.pkl'
    persistence.save_network_pickle(str(path), dict(ema=tiny_net()))
    seen = []

    class Peek(pickle.Unpickler):
        def find_class(self, module, name):
            seen.append((module, name))
            if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
                return lambda meta: meta
            return persistence.DataOnlyUnpickler.find_class(self, module, name)

    with open(path, 'rb') as f:
        unpickler = Peek(f)
        unpickler.source_name = str(path)
        meta = unpickler.load()['ema']
    assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'EDMPrecond'
    assert 'class EDMPrecond' in meta['module_src']
    assert meta['state']['_init_kwargs']['model_channels'] == 16

#----------------------------------------------------------------------------
# Hostile files: embedded source never runs, unknown callables are refused.

def test_embedded_source_is_never_run(tmp_path):
    marker = tmp_path / 'pwned'
    net = tiny_net()
    meta = dict(type='class', version=6, class_name='EDMPrecond', state=dict(net.__dict__),
                module_src=f'open({str(marker)!r}, "w").write("ran")\n')
    path = tmp_path / 'hostile.pkl'
    path.write_bytes(pickle.dumps(dict(ema=Persistent(meta))))
    loaded = persistence.load_network_pickle(str(path))
    assert not marker.exists()
    torch.testing.assert_close(outputs(loaded['ema']), outputs(net))

class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def test_other_callables_are_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'hostile.pkl'
    path.write_bytes(pickle.dumps(dict(ema=RunsCode(marker))))
    with pytest.raises(UserError, match=r'refusing to load "(posix|os|nt)\.system"'):
        persistence.load_network_pickle(str(path))
    assert not marker.exists()

#----------------------------------------------------------------------------
# Pickle protocol 2 (torch.save's) writes byte strings, such as the bytes of
# the numpy scalars in EDM's networks, as `_codecs.encode(text, 'latin1')`:
# read as data in exactly that form; any other codec call is refused.

class CodecCall:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (codecs.encode, self.args)

def test_protocol2_byte_strings_are_data(tmp_path):
    net = tiny_net()
    net.model.enc['8x8_block0'].skip_scale = np.sqrt(0.5)  # As EDM's SongUNet holds it.
    path = tmp_path / 'protocol2.pkl'
    path.write_bytes(pickle.dumps(dict(ema=net, raw=b'\x00\xff', empty=b''), protocol=2))
    assert b'_codecs\nencode' in path.read_bytes()
    data = persistence.load_network_pickle(str(path))
    assert data['raw'] == b'\x00\xff' and data['empty'] == b''
    assert torch.equal(outputs(data['ema']), outputs(net))

@pytest.mark.parametrize('args', [('x', 'rot13'), ('x', 'utf-8'), (b'x', 'latin1'), ('x', 'latin1', 'strict')])
def test_other_codec_calls_are_refused(tmp_path, args):
    path = tmp_path / 'codec.pkl'
    path.write_bytes(pickle.dumps(dict(ema=tiny_net(), x=CodecCall(*args)), protocol=2))
    with pytest.raises(UserError, match='codec.pkl: refusing to load "_codecs.encode" other than for protocol 2.s latin-1'):
        persistence.load_network_pickle(str(path))

#----------------------------------------------------------------------------
# Clear errors.

def save_with_kwargs(tmp_path, net, **kwargs_changes):
    net._init_kwargs = dict(net._init_kwargs, **kwargs_changes)
    path = tmp_path / 'net.pkl'
    persistence.save_network_pickle(str(path), dict(ema=net))
    return str(path)

def test_unknown_class(tmp_path):
    meta = dict(type='class', version=6, class_name='NoSuchNet', module_src='', state={'_init_kwargs': {}})
    path = tmp_path / 'unknown.pkl'
    path.write_bytes(pickle.dumps(dict(ema=Persistent(meta))))
    with pytest.raises(UserError, match='unknown class "NoSuchNet"'):
        persistence.load_network_pickle(str(path))

# The tools that need only the network build only "ema", as EDM reads only that entry: a snapshot
# whose loss is a fork's class still samples and transfers.
def test_only_the_network_is_built_for_the_tools(tmp_path):
    net = tiny_net()
    loss = Persistent(dict(type='class', version=6, class_name='fork.loss.SFBDLoss', module_src='',
                           state={'_init_kwargs': {}}))
    path = tmp_path / 'fork.pkl'
    persistence.save_network_pickle(str(path), dict(ema=net, loss_fn=loss, augment_pipe=None))
    with pytest.raises(UserError, match='unknown class "fork.loss.SFBDLoss"'):
        persistence.load_network_pickle(str(path))
    assert list(persistence.load_network_pickle(str(path), keys=['ema'])) == ['ema']
    torch.testing.assert_close(outputs(persistence.load_network(str(path))), outputs(net))

# A parameter that carries Python attributes (torch pickles it with its state) is data too.
def test_a_parameter_with_attributes_loads(tmp_path):
    net = tiny_net()
    net.model.enc['8x8_conv'].weight.note = 'tagged'
    path = tmp_path / 'tagged.pkl'
    persistence.save_network_pickle(str(path), dict(ema=net))
    assert b'_rebuild_parameter_with_state' in path.read_bytes()
    torch.testing.assert_close(outputs(persistence.load_network(str(path))), outputs(net))

# A crafted or damaged pickle is one error that names the file, whatever
# breaks: a state of the wrong type, constructor keywords that are not a
# dict, values the constructor refuses, nesting deeper than Python's limit,
# or a torch.save file (a training state) given for a network pickle.
@pytest.mark.parametrize('case, message', [
    ('state-list', 'has a state of type list'),
    ('kwargs-list', 'cannot build the network it describes (TypeError'),
    ('bad-model-type', "cannot build the network it describes (ValueError: unknown model_type 'Nope'"),
    ('deep', 'RecursionError'),
    ('torch-save', 'a torch.save file (such as a training-state-*.pt), not a network pickle'),
])
def test_crafted_or_damaged_pickles(tmp_path, case, message):
    path = tmp_path / 'net.pkl'
    def record(state):
        return dict(ema=Persistent(dict(type='class', version=6, class_name='EDMPrecond', module_src='', state=state)))
    kwargs = dict(img_resolution=8, img_channels=3, model_type='Nope')
    if case == 'torch-save':
        torch.save(dict(net=tiny_net().state_dict()), path)
    elif case == 'deep':  # {'ema': [[[...]]]}, 100,000 lists deep, in raw opcodes (pickle.dumps would recurse).
        depth = 100000
        path.write_bytes(b'\x80\x02}X\x03\x00\x00\x00ema' + b']' * depth + b'a' * (depth - 1) + b's.')
    else:
        state = {'state-list': [1, 2], 'kwargs-list': dict(_init_args=(), _init_kwargs=[1, 2]),
                 'bad-model-type': dict(_init_args=(), _init_kwargs=kwargs)}[case]
        path.write_bytes(pickle.dumps(record(state)))
    with pytest.raises(UserError) as error:
        persistence.load_network_pickle(str(path))
    assert str(error.value).startswith(str(path)) and message in str(error.value) and '\n' not in str(error.value)

# The samplers need a preconditioned network under "ema"; anything else there
# is named in one line, by type.
def test_ema_that_is_not_a_sampling_network(tmp_path):
    from training.augment import AugmentPipe
    unet = networks.SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1],
                             num_blocks=1, attn_resolutions=[])
    path = tmp_path / 'unet.pkl'
    persistence.save_network_pickle(str(path), dict(ema=unet))
    assert isinstance(persistence.load_network_pickle(str(path))['ema'], networks.SongUNet)  # --transfer reads it.
    with pytest.raises(UserError, match=r'unet.pkl: "ema" is not a preconditioned network that can sample \(type SongUNet;'):
        persistence.load_network(str(path))
    path = tmp_path / 'augment.pkl'
    persistence.save_network_pickle(str(path), dict(ema=AugmentPipe(p=0.1)))
    with pytest.raises(UserError, match=r'augment.pkl: "ema" in the pickle is not a network \(type AugmentPipe\)'):
        persistence.load_network_pickle(str(path))
    path = tmp_path / 'none.pkl'
    persistence.save_network_pickle(str(path), dict(augment_pipe=AugmentPipe(p=0.1)))
    with pytest.raises(UserError, match=r'none.pkl: no network \("ema"\) in the pickle'):
        persistence.load_network_pickle(str(path))

def test_missing_tensor(tmp_path):
    path = save_with_kwargs(tmp_path, tiny_net(), label_dim=10)
    with pytest.raises(UserError, match=r'EDMPrecond lacks tensor "model\.map_label\.weight"'):
        persistence.load_network_pickle(path)

def test_unexpected_tensor(tmp_path):
    path = save_with_kwargs(tmp_path, tiny_net(label_dim=10), label_dim=0)
    with pytest.raises(UserError, match='EDMPrecond has the unexpected tensor "model.map_label'):
        persistence.load_network_pickle(path)

def test_mismatched_tensor(tmp_path):
    path = save_with_kwargs(tmp_path, tiny_net(), model_channels=32)
    with pytest.raises(UserError, match=r'EDMPrecond has another shape of "model\.map_layer0\.weight" \(\(64, 16\), expected \(128, 32\)\)'):
        persistence.load_network_pickle(path)

def test_truncated_file(tmp_path, fixtures_dir):
    data = (fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl').read_bytes()
    path = tmp_path / 'truncated.pkl'
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match='truncated.pkl: not a readable network pickle'):
        persistence.load_network_pickle(str(path))

def test_missing_file(tmp_path):
    with pytest.raises(UserError, match='no such file'):
        persistence.load_network_pickle(str(tmp_path / 'nothing.pkl'))

def test_unreachable_url(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    with pytest.raises(UserError, match='127.0.0.1:9/net.pkl: cannot be reached'):
        persistence.load_network_pickle('http://127.0.0.1:9/net.pkl')

#----------------------------------------------------------------------------
# URLs are downloaded once into EDM's cache layout.

def test_url_download_is_cached(tmp_path, monkeypatch):
    served = tmp_path / 'served'
    served.mkdir()
    persistence.save_network_pickle(str(served / 'net.pkl'), dict(ema=tiny_net()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{server.server_address[1]}/net.pkl'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    try:
        first = persistence.load_network(url)
    finally:
        server.shutdown()
        server.server_close()
    cached = cached_path_for_url(url)
    assert os.path.isfile(cached) and os.path.dirname(cached) == str(tmp_path / 'cache' / 'downloads')
    second = persistence.load_network(url)  # The server is gone: this comes from the cache.
    torch.testing.assert_close(outputs(first), outputs(second))

# A cache that EDM filled: EDM names a download after the whole URL (or the server's file name) behind
# the URL's md5, and ignores XDG_CACHE_HOME; any file of that prefix is the download, here as in EDM.
def test_a_download_that_edm_cached_is_found(tmp_path, monkeypatch):
    import hashlib
    url = 'https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-tiny.pkl'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert dnnlib.util.make_cache_dir_path('downloads') == str(tmp_path / 'cache' / 'downloads')
    edm_name = hashlib.md5(url.encode()).hexdigest() + '_' + re.sub(r'[^0-9A-Za-z._-]', '_', url)
    os.makedirs(tmp_path / 'cache' / 'downloads')
    persistence.save_network_pickle(str(tmp_path / 'cache' / 'downloads' / edm_name), dict(ema=tiny_net()))
    assert cached_path_for_url(url) == str(tmp_path / 'cache' / 'downloads' / edm_name)
    assert dnnlib.util.open_url(url, return_filename=True) == cached_path_for_url(url)  # No network needed.
    persistence.load_network(url)
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert dnnlib.util.make_cache_dir_path('downloads') == str(tmp_path / 'home' / '.cache' / 'dnnlib' / 'downloads')

# EDM's helpers keep their names, keywords and positions.
def test_edm_helpers_of_dnnlib_util(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'abc')
    assert dnnlib.util.open_url(str(path), None, 10, False, True) == str(path)
    with dnnlib.util.open_url(str(path), cache_dir=str(tmp_path), num_attempts=1, verbose=False) as f:
        assert f.read() == b'abc'
    net = dnnlib.util.construct_class_by_name(class_name='training.networks.EDMPrecond', img_resolution=8,
                                              img_channels=3, model_type='SongUNet', model_channels=16,
                                              channel_mult=[1], num_blocks=1, attn_resolutions=[])
    assert type(net).__name__ == 'EDMPrecond'
    assert dnnlib.util.call_func_by_name(3, func_name='math.sqrt') == math.sqrt(3)
    assert dnnlib.util.get_obj_by_name('training.networks.EDMPrecond.round_sigma') is networks.EDMPrecond.round_sigma
    for name in ('training.networks.Nothing', '..x', 'x'):
        with pytest.raises(ValueError, match=f'cannot find "{re.escape(name)}"'):
            dnnlib.util.get_obj_by_name(name)
    assert [dnnlib.util.format_time(s) for s in (5, 187, 7509, 101_520)] == ['5s', '3m 07s', '2h 05m 09s', '1d 04h 12m']

#----------------------------------------------------------------------------
# Live copies and loads leave the random stream alone and keep the device.

def test_deepcopy_does_not_construct(tmp_path):
    import copy
    net = tiny_net()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    clone = copy.deepcopy(net)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), clone.state_dict().values()))
    path = tmp_path / 'net.pkl'
    persistence.save_network_pickle(str(path), dict(ema=net))
    torch.manual_seed(5)
    persistence.load_network(str(path))
    assert torch.equal(torch.rand(3), expected)
    assert (os.stat(path).st_mode & 0o777) == 0o666 & ~current_umask()

#----------------------------------------------------------------------------
