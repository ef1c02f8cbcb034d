"""Network pickles in EDM's layout, written and read without running code from the file.

EDM pickles each network as a call to `torch_utils.persistence._reconstruct_persistent_obj(meta)`,
where `meta` carries the source text of the defining module, the class name and the object's
`__dict__` (constructor arguments included). EDM rebuilds the object by executing that source:
whoever wrote the file decides what runs on the reader's machine.

This module reads the same files as data. A restricted unpickler admits only plain containers,
tensors, numpy scalars and byte strings, turns every persistent object into a `PersistentRecord`,
and the records are then rebuilt from this repository's own classes: look the class name up, call the
constructor with the recorded arguments, copy the tensors in. The embedded source is never run,
so a file whose source is missing, stale or hostile loads the same way.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import io
import pickle
import sys
import types
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np
import torch

from dnnlib.util import EasyDict, UserError, open_url
from torch_utils import misc

#----------------------------------------------------------------------------
# Registry of classes that may appear in network pickles, keyed by class name
# (EDM records the bare class name next to the module source).

_registry: dict[str, type] = {}
_FORMAT_VERSION = 6  # EDM's persistence format version.

def persistent_class(cls: type) -> type:
    """Class decorator: record constructor arguments and pickle in EDM's persistent layout."""
    original_init = cls.__init__

    @functools.wraps(original_init)
    def init_and_record(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        # Recorded after construction, as EDM does; deep copies keep later edits out.
        if type(self) is cls:
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

    def reduce_persistent(self, protocol: int = 2):
        meta = dict(type='class', version=_FORMAT_VERSION, module_src=_module_source(type(self)),
                    class_name=type(self).__name__, state=dict(self.__dict__))
        return (_reconstruct_persistent_obj, (meta,))

    def deepcopy_live(self, memo: dict):
        # A live copy (e.g. the EMA network) copies the state as it is: no constructor, so no
        # random draws and no change of device.
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    cls.__init__ = init_and_record
    cls.__reduce_ex__ = reduce_persistent
    cls.__deepcopy__ = deepcopy_live
    # The project's own class keeps its name when other code (e.g. source run by
    # load_pickle_running_code) defines a class of the same name.
    _registry.setdefault(cls.__name__, cls)
    return cls

@functools.lru_cache(maxsize=None)
def _module_source(cls: type) -> str:
    # EDM stores the source text of the defining module; kept for layout compatibility only.
    try:
        return inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError):
        return f'# source of {cls.__module__} unavailable\n'

def _reconstruct_persistent_obj(meta: dict) -> Any:
    """What a plain `pickle.load` calls for a persistent object: rebuild it from this repository's
    class without executing the recorded source. (`load_network_pickle` is the safe reader: a plain
    `pickle.load` would still run any other callable the file names.)"""
    return build_object(PersistentRecord(meta))

#----------------------------------------------------------------------------
# Placeholders produced by the restricted unpickler.

class PersistentRecord:
    """One persistent object of a pickle: its class name and recorded `__dict__`."""

    def __init__(self, meta: Any):
        if not isinstance(meta, dict) or meta.get('type') != 'class' or 'class_name' not in meta:
            raise UserError('unsupported persistent object in network pickle')
        self.class_name: str = str(meta['class_name'])
        self.state: dict = meta.get('state') or {}

class ModuleRecord:
    """A plain torch.nn container (e.g. ModuleDict) inside a persistent object."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.state: dict = {}

    def __setstate__(self, state: dict) -> None:
        self.state = state

#----------------------------------------------------------------------------
# The restricted unpickler: an allow-list of globals, nothing else.

def _load_storage(data: bytes) -> Any:
    # Tensors in a plain pickle carry their storage as a small legacy torch.save() stream.
    return misc.load_plain(io.BytesIO(data))

def _make_record(meta: Any) -> PersistentRecord:
    return PersistentRecord(meta)

def _protocol2_bytes(source_name: str, *args: Any) -> bytes:
    # Pickle protocol 2 (torch.save's) has no opcode for byte strings: it writes a non-empty one as
    # `_codecs.encode(text, 'latin1')`, e.g. the bytes of a numpy scalar such as EDM's skip_scale.
    # Only that form is read: a str and latin-1, giving bytes; any other codec call is refused.
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ('latin1', 'latin-1'):
        raise UserError(f'{source_name}: refusing to load "_codecs.encode" other than for protocol 2\'s '
                        'latin-1 byte strings (only network data is read from pickles; nothing in them is run)')
    return args[0].encode('latin-1')

def _protocol2_empty_bytes() -> bytes:
    # ... and an empty one as `bytes()`, without arguments.
    return b''

try:
    from numpy._core.multiarray import scalar as _numpy_scalar  # numpy >= 1.26 (the name of numpy 2)
except ImportError:
    from numpy.core.multiarray import scalar as _numpy_scalar  # older numpy 1.x

_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _make_record,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): torch._utils._rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): torch._utils._rebuild_parameter_with_state,  # Attributes: data.
    ('torch.storage', '_load_from_bytes'): _load_storage,
    ('builtins', 'bytes'): _protocol2_empty_bytes,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('dnnlib.util', 'EasyDict'): EasyDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'complex'): complex,
}

class DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of `_ALLOWED`, torch dtypes and protocol 2's latin-1
    byte strings; persistent objects become `PersistentRecord`s and plain torch.nn containers
    `ModuleRecord`s. Extra keywords go to `pickle.Unpickler` (torch.load passes `encoding`)."""

    def __init__(self, file: BinaryIO, source_name: str, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.source_name = source_name

    def find_class(self, module: str, name: str) -> Any:
        if module == '__builtin__':
            module = 'builtins'  # Protocol 2 pickles (torch.save's) name Python 2's module.
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ('_codecs', 'encode'):
            return functools.partial(_protocol2_bytes, self.source_name)
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith('torch.nn.modules.'):
            return ModuleRecord
        raise UserError(f'{self.source_name}: refusing to load "{module}.{name}" from the pickle '
                        '(only network data is read from pickles; nothing in them is run)')

#----------------------------------------------------------------------------
# Rebuilding objects from records.

def record_tensors(record: PersistentRecord) -> dict[str, torch.Tensor]:
    """The recorded parameters and buffers of a module, by state-dict name, in state-dict order."""
    out: dict[str, torch.Tensor] = {}
    _tensors_of(record.state, '', out)
    return out

def record_parameter_names(record: PersistentRecord) -> list[str]:
    """Names of the recorded parameters in the order of the module's `parameters()`, which is the
    order of an optimizer's parameter indices."""
    names: list[str] = []

    def walk(state: dict, prefix: str) -> None:
        names.extend(prefix + name for name, value in (state.get('_parameters') or {}).items() if value is not None)
        for name, child in (state.get('_modules') or {}).items():
            if isinstance(child, (PersistentRecord, ModuleRecord)):
                walk(child.state, prefix + name + '.')
    walk(record.state, '')
    return names

def _tensors_of(state: dict, prefix: str, out: dict[str, torch.Tensor]) -> None:
    # Walk a recorded nn.Module state the way Module.state_dict() would.
    skip = set(state.get('_non_persistent_buffers_set') or ())
    for name, value in (state.get('_parameters') or {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in (state.get('_buffers') or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get('_modules') or {}).items():
        if isinstance(child, (PersistentRecord, ModuleRecord)):
            _tensors_of(child.state, prefix + name + '.', out)
        elif isinstance(child, torch.nn.Module):  # Already rebuilt by a plain pickle.load.
            out.update({f'{prefix}{name}.{k}': v for k, v in child.state_dict().items()})

def _class_for(name: str, source_name: str = 'network pickle') -> type:
    _import_project_classes()
    if name not in _registry:
        raise UserError(f'{source_name}: unknown class "{name}" in the network pickle; known: {", ".join(sorted(_registry))}')
    return _registry[name]

def _import_project_classes() -> None:
    # Importing these modules registers their persistent classes.
    import importlib
    for module in ('training.networks', 'training.loss', 'training.augment'):
        try:
            importlib.import_module(module)
        except ImportError:
            pass

def build_object(record: PersistentRecord, source_name: str = 'network pickle') -> Any:
    """Construct this repository's object for a record and copy the recorded tensors into it."""
    cls = _class_for(record.class_name, source_name)
    if not isinstance(record.state, dict):
        raise UserError(f'{source_name}: {record.class_name} has a state of type {type(record.state).__name__}, not a dict')
    args = record.state.get('_init_args', ())
    kwargs = record.state.get('_init_kwargs', {})
    if '_init_kwargs' not in record.state:
        raise UserError(f'{source_name}: {record.class_name} has no recorded constructor arguments')
    kwargs = {k: _plain(v) for k, v in dict(kwargs).items()}
    try:
        with torch.random.fork_rng(devices=[]):  # Initial weights are overwritten: leave the caller's RNG alone.
            obj = cls(*[_plain(a) for a in args], **kwargs)
    except TypeError as e:
        raise UserError(f'{source_name}: cannot construct {record.class_name}: {e}') from None
    if isinstance(obj, torch.nn.Module):
        recorded = record_tensors(record)
        expected = obj.state_dict()
        problem = misc.tensor_mismatch(recorded, expected)
        if problem is not None:
            raise UserError(f'{source_name}: {record.class_name} {problem}')
        with torch.no_grad():
            obj.load_state_dict({k: v.to(expected[k].dtype) for k, v in recorded.items()}, strict=True)
        obj.train(bool(record.state.get('training', False)))
        requires_grad = any(p.requires_grad for p in recorded.values() if isinstance(p, torch.nn.Parameter))
        obj.requires_grad_(requires_grad)
    return obj

def _plain(value: Any) -> Any:
    # Constructor arguments recorded by EDM may hold numpy scalars and EasyDicts.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)({k: _plain(v) for k, v in value.items()}) if isinstance(value, EasyDict) \
            else {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value

def _build_all(obj: Any, source_name: str) -> Any:
    if isinstance(obj, PersistentRecord):
        return build_object(obj, source_name)
    if isinstance(obj, dict):
        return type(obj)((k, _build_all(v, source_name)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_build_all(v, source_name) for v in obj]
    return obj

#----------------------------------------------------------------------------
# Public entry points.

def load_network_pickle(path_or_url: str, *, cache: bool = True, keys: Sequence[str] | None = None) -> dict:
    """Read a network pickle (EDM's or this project's) from a path or URL, as data only.

    Returns the pickled dict (`ema`, `loss_fn`, `augment_pipe`, `dataset_kwargs`, ...) with every
    persistent object rebuilt from this repository's classes, or only the entries `keys` (so that a
    loss or augmentation of another fork's classes does not stand in the way of its `ema`). Nothing
    stored in the file runs.
    """
    with open_url(path_or_url, cache=cache) as f:
        data = f.read()
    return load_network_pickle_bytes(data, source_name=str(path_or_url), keys=keys)

# What a damaged or crafted pickle raises while it is read or its objects are
# built (a RuntimeError includes a constructor asking for an absurd amount of
# memory); each becomes one line that names the file.
_CORRUPT_PICKLE_ERRORS = (EOFError, pickle.UnpicklingError, ValueError, RuntimeError, IndexError, KeyError, TypeError,
                          AttributeError, RecursionError, MemoryError, OverflowError)

def load_network_pickle_bytes(data: bytes, *, source_name: str = 'network pickle',
                              keys: Sequence[str] | None = None) -> dict:
    if data[:2] == b'PK' and b'data.pkl' in data[:4096]:  # torch.save's zip format, e.g. a training state.
        raise UserError(f'{source_name}: a torch.save file (such as a training-state-*.pt), not a network pickle; '
                        'continue a run with --resume, or give a network-snapshot-*.pkl')
    try:
        obj = DataOnlyUnpickler(io.BytesIO(data), source_name).load()
    except UserError:
        raise
    except _CORRUPT_PICKLE_ERRORS as e:
        message = ' '.join(str(e).split())  # One line, whatever the error's own layout.
        raise UserError(f'{source_name}: not a readable network pickle (truncated or corrupt: '
                        f'{type(e).__name__}: {message})') from None
    if keys is not None and isinstance(obj, dict):
        obj = {key: value for key, value in obj.items() if key in keys}
    try:
        obj = _build_all(obj, source_name)
    except UserError:
        raise
    except _CORRUPT_PICKLE_ERRORS as e:
        message = ' '.join(str(e).split())
        raise UserError(f'{source_name}: cannot build the network it describes ({type(e).__name__}: {message})') from None
    if isinstance(obj, torch.nn.Module):
        obj = dict(ema=obj)  # A bare network pickle.
    if not isinstance(obj, dict) or 'ema' not in obj:
        raise UserError(f'{source_name}: no network ("ema") in the pickle')
    if not isinstance(obj['ema'], torch.nn.Module):
        raise UserError(f'{source_name}: "ema" in the pickle is not a network (type {type(obj["ema"]).__name__})')
    return obj

# What the samplers read of a network: a preconditioned denoiser (EDMPrecond,
# VPPrecond, VEPrecond, iDDPMPrecond) has these; a bare U-Net has not.
SAMPLING_ATTRIBUTES = ('img_resolution', 'img_channels', 'label_dim', 'sigma_min', 'sigma_max', 'round_sigma')

def load_network(path_or_url: str) -> torch.nn.Module:
    """The `ema` network of a pickle, in eval mode, without gradients; a UserError unless it is a
    preconditioned denoiser that the samplers can run."""
    net = load_network_pickle(path_or_url, keys=['ema'])['ema']
    if not all(hasattr(net, name) for name in SAMPLING_ATTRIBUTES):
        raise UserError(f'{path_or_url}: "ema" is not a preconditioned network that can sample (type '
                        f'{type(net).__name__}; expected EDMPrecond, VPPrecond, VEPrecond or iDDPMPrecond)')
    return net.eval().requires_grad_(False)

def load_pickle_running_code(f: BinaryIO) -> Any:
    """Unpickle a file as EDM would, executing the module source stored for each persistent object.

    Whoever wrote the file decides what runs: only for files you trust, and only where the user
    asked for it explicitly (fid.py's pickled detectors). Network pickles never go through here.
    """
    modules: dict[str, types.ModuleType] = {}

    def reconstruct(meta: dict) -> Any:
        source = meta['module_src']
        if source not in modules:
            module = types.ModuleType(f'_persistent_module_{len(modules)}')
            sys.modules[module.__name__] = module
            exec(compile(source, module.__name__, 'exec'), module.__dict__)  # noqa: S102 -- explicit opt-in.
            modules[source] = module
        cls = modules[source].__dict__[meta['class_name']]
        obj = cls.__new__(cls)
        if callable(getattr(obj, '__setstate__', None)):
            obj.__setstate__(meta['state'])
        else:
            obj.__dict__.update(meta['state'])
        return obj

    class CodeRunningUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
                return reconstruct
            return super().find_class(module, name)

    return CodeRunningUnpickler(f).load()

def save_network_pickle(path: str, data: dict) -> None:
    """Write a snapshot dict (`ema`, `loss_fn`, `augment_pipe`, `dataset_kwargs`) atomically."""
    from dnnlib.util import atomic_write
    with atomic_write(path, 'wb') as f:
        pickle.dump(data, f)

#----------------------------------------------------------------------------
