"""Extra training data: images that the training loop mixes into its batches beside the run's dataset.

The training loop's side of a source of images that it does not know by name, such as Online
SFBD's buffer of denoised observations (sfbd/online.py): the loop builds it by `class_name` from
the run's options, so that this layer never imports the method that implements it. What a source
needs at setup, what it adds to a batch, and what it saves and restores are the methods of
`ExtraData`; the order in which the loop may call them is enforced here, by `ExtraData.restore()`
and `ExtraData.start()`. This module is not a dataset, and holds no training arithmetic.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Sequence

import torch

from dnnlib.util import construct_class_by_name
from torch_utils import training_stats

#----------------------------------------------------------------------------
# What a source needs at setup: its own options (plain data of the run's
# configuration, with its `class_name`), plus the run's dataset, whose items
# it adds to, and what only the loop knows.

def make_extra_data(kwargs: dict, clean: Any, batch_size: int, batch_gpu: int, device: torch.device) -> ExtraData:
    """The source of `kwargs` (class_name and options) for a run on the dataset `clean`."""
    extra = construct_class_by_name(**kwargs, clean=clean, batch_size=batch_size, batch_gpu=batch_gpu, device=device)
    if not isinstance(extra, ExtraData):
        raise TypeError(f'{kwargs.get("class_name")}: not extra data of the training loop (training.extra_data.ExtraData)')
    return extra

# A batch of a source's dataset: (images, labels, keys). The keys tell the
# source which items are its own (their images are placeholders that it
# replaces in the training process, where its data lives).

def split_batch(batch: Sequence[torch.Tensor], extra: ExtraData | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The images, labels and (with extra data) keys of a batch from the data loader."""
    if extra is None:
        images, labels = batch[0], batch[1]
        return images, labels, None
    images, labels, keys = batch
    return images, labels, keys

#----------------------------------------------------------------------------
# The interface. A source is made in the 'setup' phase; `restore()` (a
# resumed run) belongs there; `start()` starts the data loader, lets the
# source make its data with the starting network, and only then restores the
# run's random generators (the loader draws its seed from them when it
# starts); after it, the source is 'started' and the steps may run.

class ExtraData(abc.ABC):
    """Images that the training loop mixes into its batches (see the module's docstring)."""

    dataset: Any  # What the data loader draws from: the run's data and the source's items, each (image, label, key).

    # Implemented by a source.

    @abc.abstractmethod
    def begin(self, net: torch.nn.Module, ema: torch.nn.Module, cur_nimg: int, total_nimg: int | None = None) -> None:
        """Make the source's data with the starting network (unless a training state restored it)."""

    @abc.abstractmethod
    def compose(self, images: torch.Tensor, keys: torch.Tensor, cur_nimg: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the source's images in their slots of a batch (float images on the device); returns the
        batch and the per-image loss weights [B, 1, 1, 1]."""

    @abc.abstractmethod
    def after_step(self, net: torch.nn.Module, ema: torch.nn.Module) -> None:
        """After every optimizer step (and the EMA update)."""

    @abc.abstractmethod
    def end_tick(self, stats: training_stats.Collector, tick_sec: float, cur_nimg: int) -> list[str]:
        """At the end of a tick: report statistics to `stats` (before it is updated); returns the
        fields of the tick line."""

    @abc.abstractmethod
    def final_lines(self, cur_nimg: int) -> list[str]:
        """The lines that close the log of a run that reached its duration."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a training state saves: plain tensors and numbers (torch.load(weights_only=True))."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        """Take a saved state (from the training state at `where`); called through restore()."""

    # Called by the training loop, in this order.

    def restore(self, state: dict[str, Any], where: str) -> None:
        """Resume: take a saved state. Only before start()."""
        if self._phase() != 'setup':
            raise RuntimeError(f'{type(self).__name__}.restore(): the source has started already')
        self.load_state_dict(state, where)

    def start(self, start_loader: Callable[[], Iterator], restore_rng: Callable[[], None], *,
              net: torch.nn.Module, ema: torch.nn.Module, cur_nimg: int, total_nimg: int | None) -> Iterator:
        """Start the data loader, make the source's data, then restore the run's random generators;
        returns the loader's iterator. Once only."""
        if self._phase() != 'setup':
            raise RuntimeError(f'{type(self).__name__}.start(): called twice')
        batches = start_loader()
        self.begin(net=net, ema=ema, cur_nimg=cur_nimg, total_nimg=total_nimg)
        restore_rng()
        self._started = True
        return batches

    def _phase(self) -> str:
        return 'started' if getattr(self, '_started', False) else 'setup'

#----------------------------------------------------------------------------
# The loop's start of its batches, with or without extra data: the loader
# first, the random generators restored last.

def start_batches(extra: ExtraData | None, start_loader: Callable[[], Iterator], restore_rng: Callable[[], None],
                  **begin_kwargs: Any) -> Iterator:
    if extra is not None:
        return extra.start(start_loader, restore_rng, **begin_kwargs)
    batches = start_loader()
    restore_rng()
    return batches

#----------------------------------------------------------------------------
