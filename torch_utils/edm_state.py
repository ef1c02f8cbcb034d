"""EDM's training states (`training-state-NNNNNN.pt`), read as data.

EDM's training loop writes `torch.save(dict(net=net, optimizer_state=optimizer.state_dict()))`:
the whole network module, pickled by EDM's persistence module as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)` that carries the source text of the
network's module, next to Adam's state dict. `torch.load` of such a file executes that source (and
whatever else the pickle names); torch >= 2.6 refuses it under its default `weights_only=True`.
The EMA is not in the state: it is in the snapshot `network-snapshot-NNNNNN.pkl` written beside it,
and the training progress is only in the file name (NNNNNN kimg).

Here the archive is opened with torch's own reader (`torch.load` unpacks the zip and rebuilds the
tensor storages), but the pickle inside is read by the restricted unpickler of
torch_utils.persistence: persistent objects become records (class name and recorded state),
tensors and plain containers are rebuilt, and every other global is refused. Nothing stored in
the file runs. The repository's own training states never come here: they hold state dicts only
and are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import zipfile
from typing import Any, BinaryIO

import torch

from dnnlib.util import UserError
from torch_utils import persistence

STATE_PATTERN = re.compile(r'^training-state-(\d+)\.pt$')

#----------------------------------------------------------------------------

@dataclasses.dataclass
class EDMTrainingState:
    path:            str                     # The state file.
    kimg:            int                     # Training progress, from the file name.
    class_name:      str                     # Class of the network (EDMPrecond, VPPrecond, ...).
    init_kwargs:     dict                    # Its recorded constructor arguments.
    tensors:         dict[str, torch.Tensor] # Its parameters and buffers, by state-dict name.
    param_names:     list[str]               # Parameter names in the order of the optimizer's indices.
    optimizer_state: dict                    # Adam's state dict as EDM saved it.

    @property
    def snapshot_path(self) -> str:
        """The snapshot EDM wrote with the state; it holds the EMA."""
        return os.path.join(os.path.dirname(self.path), f'network-snapshot-{self.kimg:06d}.pkl')

#----------------------------------------------------------------------------
# Telling EDM's states from this repository's: EDM's pickle a persistent
# object, whose reconstruction call names EDM's persistence module. Only a
# hint for choosing the reader; the reader itself trusts nothing.

def is_edm_training_state(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [name for name in z.namelist() if name.endswith('/data.pkl') or name == 'data.pkl']
            return bool(pickles) and b'_reconstruct_persistent_obj' in z.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False

#----------------------------------------------------------------------------
# The pickle module handed to torch.load: its Unpickler is persistence's
# restricted one (torch subclasses it to resolve storage types itself).

def _data_only_pickle_module(source_name: str) -> types.ModuleType:
    class Unpickler(persistence.DataOnlyUnpickler):
        def __init__(self, file: BinaryIO, **kwargs: Any):
            super().__init__(file, source_name, **kwargs)

    def load(file: BinaryIO, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType('torch_utils.edm_state.data_only_pickle')
    module.Unpickler = Unpickler
    module.load = load
    return module

def load_edm_training_state(path: str) -> EDMTrainingState:
    """Read EDM's `training-state-NNNNNN.pt` as data; nothing stored in it runs."""
    m = STATE_PATTERN.match(os.path.basename(path))
    if m is None:
        raise UserError(f'{path}: EDM\'s training states are named training-state-NNNNNN.pt (NNNNNN = kimg); '
                        'the progress is read from the name')
    try:
        with zipfile.ZipFile(path) as z:
            if any(name.endswith('constants.pkl') for name in z.namelist()):
                raise UserError(f'{path}: a TorchScript archive, not a training state')
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f'{path}: not a readable training state ({type(e).__name__}: {e})') from None
    if os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes', 'true'):
        raise UserError(f'{path}: EDM\'s training states hold a pickled module, which torch\'s weights-only loader '
                        'cannot read; unset TORCH_FORCE_WEIGHTS_ONLY_LOAD to read it with this repository\'s '
                        'data-only reader (nothing in the file runs either way)')
    try:
        data = torch.load(path, map_location='cpu', pickle_module=_data_only_pickle_module(path), weights_only=False)
    except UserError:
        raise
    except Exception as e:  # Truncated or corrupt archives.
        raise UserError(f'{path}: not a readable training state ({type(e).__name__}: {e})') from None
    if not isinstance(data, dict) or not isinstance(data.get('net'), persistence.PersistentRecord) \
            or not isinstance(data.get('optimizer_state'), dict):
        raise UserError(f'{path}: not an EDM training state (expected "net" and "optimizer_state")')
    record = data['net']
    if '_init_kwargs' not in record.state:
        raise UserError(f'{path}: the network ({record.class_name}) has no recorded constructor arguments')
    return EDMTrainingState(path=path, kimg=int(m.group(1)), class_name=record.class_name,
                            init_kwargs=dict(record.state['_init_kwargs']), tensors=persistence.record_tensors(record),
                            param_names=persistence.record_parameter_names(record),
                            optimizer_state=data['optimizer_state'])

#----------------------------------------------------------------------------
# Adam's state refers to parameters by index, in the order of the network's
# parameters(). Matched by name, so that the state fits any network with the
# same tensors whatever order it registers them in.

def optimizer_state_for(state: EDMTrainingState, net: torch.nn.Module) -> dict:
    """EDM's optimizer state dict re-indexed for `net`'s parameter order (one parameter group)."""
    saved = state.optimizer_state
    groups = saved.get('param_groups')
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(saved.get('state'), dict):
        raise UserError(f'{state.path}: expected an optimizer state with one parameter group')
    params = dict(net.named_parameters())
    if len(groups[0].get('params', [])) != len(state.param_names) or set(state.param_names) != set(params):
        raise UserError(f'{state.path}: the optimizer state does not fit the network\'s parameters')
    index_by_name = {name: groups[0]['params'][i] for i, name in enumerate(state.param_names)}
    per_param = {}
    for new_index, (name, param) in enumerate(params.items()):
        entry = saved['state'].get(index_by_name[name])
        if entry is None:
            continue  # A parameter the optimizer never stepped (no gradient yet).
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and tuple(value.shape) != tuple(param.shape):
                raise UserError(f'{state.path}: optimizer "{key}" of "{name}" has shape {tuple(value.shape)}, '
                                f'the parameter {tuple(param.shape)}')
        per_param[new_index] = entry
    group = dict(groups[0], params=list(range(len(params))))
    return dict(state=per_param, param_groups=[group])

#----------------------------------------------------------------------------
