"""Online SFBD: SFBD's denoising and fine-tuning in one continuous training run.

SFBD's rounds (docs/sfbd.md) alternate two steps over the whole data: denoise every observation
with the current model, then fine-tune on clean + denoised images. The follow-up paper (Lu, Lo, Yu,
"SFBD Flow", arXiv 2506.02371) lets both happen at once, inside one training run:

    buffer   B = {x_1, ..., x_N}: one denoised image per observation y_i, filled once at the start
             by backward sampling (sfbd/backward.py) from every y_i with the starting network;
    refresh  after every m-th optimizer step, the next r observations in round-robin order are
             denoised again with the current network and replace their entries of B;
    data     every batch is drawn from clean ∪ B, as a union of datasets is;
    weight   the loss of a buffer image is multiplied by w = min(1, n / n_ramp), n the images
             trained on since the online run began: denoised images enter the loss gradually.

With r = N and m the length of a round this is SFBD's rounds (without the ramp); small m and r let
the model and its denoised data move together. The paper's: the scheme (one run, refreshed denoised
data, the 0 -> 1 ramp of their weight) and m = 20 steps per refresh as its default. Ours: the
round-robin order, r, the ramp's length, the EMA network for refreshes, the buffer's precision and
place. docs/sfbd.md gives the reasons and the measurements.

`DenoisedBuffer` is the buffer and its refresh stream; `OnlineSFBD` is the training loop's view of
it (the union dataset, the loss weights, the refresh schedule, the state in training states).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
import tqdm

from dnnlib.util import UserError
from sfbd.backward import MODES, backward_nfe, backward_sample, denoising_sigmas, image_seeds
from sfbd.cost import trained_images
from sfbd.observations import ObservationSet
from torch_utils import distributed as dist
from torch_utils import training_stats
from training.dataset import images_to_float
from training.extra_data import ExtraData
from training.sampler import StackedRandomGenerator, to_uint8

REFRESH_NETS = ('ema', 'raw')   # Network of the refreshes: the weight average, or the network being trained.
BUFFER_DTYPES = {'uint8': torch.uint8, 'float16': torch.float16, 'float32': torch.float32}

# Defaults of the options (docs/sfbd.md has the reasons): the paper's m = 20
# steps per refresh; denoise.py's sampler (the release's ODE, EDM's 18-step grid);
# the buffer in 8 bits, as denoise.py's PNGs, so that training states stay small.
DEFAULTS = dict(refresh_every=20, mode='ode', num_steps=18, refresh_net='ema', buffer_dtype='uint8')

# Without --refresh-batch or --refresh-passes a run refreshes two passes over
# the observations (the fill not counted): with the fill, the denoising of
# three rounds. Chosen from the demo's seeds at two noise levels
# (docs/sfbd.md, "How the default refreshes were chosen").
DEFAULT_REFRESH_PASSES = 2.0
SAMPLER_SIGMA_MAX = 80  # The top of EDM's grid (every network of this repository reaches it).

#----------------------------------------------------------------------------
# The loss weight of buffer images: a linear ramp from 0 to 1 over
# `rampup_nimg` images trained on since the online run began; 0 = 1 at once.

def ramp_weight(nimg_since_start: float, rampup_nimg: float) -> float:
    if rampup_nimg <= 0:
        return 1.0
    return min(max(nimg_since_start / rampup_nimg, 0.0), 1.0)

#----------------------------------------------------------------------------
# Observations: one or several observation sets read as one. Observation i is
# the i-th image of the sets in turn, with its own noise level (one per set, or
# one per image where the set records them).

class Observations:
    def __init__(self, paths: Sequence[str], option: str = '--noisy', cache: bool = False):
        if not paths:
            raise UserError(f'{option}: no observation set given')
        self.paths = [str(path) for path in paths]
        self.sets = [ObservationSet(path, option=option, cache=cache) for path in self.paths]
        first = self.sets[0]
        for path, obs in zip(self.paths[1:], self.sets[1:]):
            if obs.image_shape != first.image_shape:
                raise UserError(f'{option}={path}: observations are {"x".join(map(str, obs.image_shape))}, but '
                                f'{self.paths[0]} holds {"x".join(map(str, first.image_shape))}; the sets must agree')
        self.starts = np.cumsum([0] + [len(obs) for obs in self.sets])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def image_shape(self) -> list[int]:
        return list(self.sets[0].image_shape)

    def _locate(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self.starts, indices, side='right') - 1
        return which, indices - self.starts[which]

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """Observations [B, C, H, W], float32 in [-1, 1] units plus noise."""
        which, local = self._locate(indices)
        return torch.from_numpy(np.stack([self.sets[k].dataset[int(i)][0] for k, i in zip(which, local)]))

    def sigmas(self, indices: Sequence[int]) -> np.ndarray:
        """The noise level of each observation, [B] float64."""
        which, local = self._locate(indices)
        return np.array([self.sets[k].sigmas[i] for k, i in zip(which, local)], dtype=np.float64)

    @property
    def sigma_range(self) -> tuple[float, float]:
        return min(obs.sigma_range[0] for obs in self.sets), max(obs.sigma_range[1] for obs in self.sets)

    def label_vectors(self, label_dim: int, onehot: bool, option: str = '--noisy') -> np.ndarray:
        """Every observation's label as the clean dataset gives them ([N, label_dim] float32):
        class labels one-hot over the clean set's classes, label vectors as they are."""
        if label_dim == 0:
            return np.zeros([len(self), 0], dtype=np.float32)
        parts = []
        for path, obs in zip(self.paths, self.sets):
            data = obs.dataset
            if not data.has_labels:
                raise UserError(f'{option}={path}: has no labels, but the run is class-conditional (--cond=1)')
            if data.has_onehot_labels != onehot or data.label_dim > label_dim or (not onehot and data.label_dim != label_dim):
                raise UserError(f'{option}={path}: its labels ({data.label_dim} {"classes" if data.has_onehot_labels else "values"}) '
                                f'do not fit those of the clean data ({label_dim} {"classes" if onehot else "values"})')
            labels = np.stack([data.get_label(i) for i in range(len(data))]).astype(np.float32)
            parts.append(np.pad(labels, ((0, 0), (0, label_dim - labels.shape[1]))))
        return np.concatenate(parts)

    def describe_sigmas(self) -> str:
        low, high = self.sigma_range
        return f'sigma {low:g}' if low == high else f'sigma {low:g} to {high:g}'

    def fingerprint(self) -> list[dict]:
        return [entry for obs in self.sets for entry in obs.dataset.fingerprint()]

    def close(self) -> None:
        for obs in self.sets:
            obs.close()

#----------------------------------------------------------------------------
# Every process's rows, concatenated in rank order (collective). Rank k holds
# counts[k] rows; rows travel in float32 on the device of the process group.

def _gather_rows(rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    if not torch.distributed.is_initialized() or dist.get_world_size() == 1:
        return rows
    padded = rows.new_zeros([max(counts), *rows.shape[1:]])
    padded[:len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])

#----------------------------------------------------------------------------
# The buffer: one denoised image per observation, renewed by a stream of
# refreshes. Stream position p is observation p mod N, denoised with the
# random stream of image_seeds(seed, [p]), so an image depends on the network
# at its refresh, the seed and p only, not on batching or the number of
# processes; the first pass (p < N) draws the noise of `denoise.py --seed`.
# A uint8 buffer (the default) holds what denoise.py writes: its images
# rounded by the very rule of its PNGs (training.sampler.to_uint8), read back
# as the training loop reads PNGs (x / 127.5 - 1). Float buffers hold the
# images clipped to [-1, 1] like the PNGs, but not rounded.

class DenoisedBuffer:
    def __init__(self,
        observations:   Observations,           # The noisy observations y_i.
        labels:         torch.Tensor | None = None, # Their class labels for the network, [N, label_dim]; None = unconditional.
        mode:           str = 'ode',            # Backward sampler (sfbd/backward.py): 'ode' or 'sde'.
        num_steps:      int = 18,               # Steps of EDM's grid that is cut at each sigma (denoise.py --steps).
        seed:           int = 0,                # Seed of the per-image noise (SDE, churn).
        dtype:          torch.dtype = torch.uint8, # Precision of the stored images: uint8 as denoise.py's PNGs, or a float type.
        device:         torch.device | str = 'cpu',  # Where the network runs.
        storage:        torch.device | str = 'cpu',  # Where the buffer lives.
        max_batch:      int = 64,               # Most observations one process denoises at once.
        clip:           bool = True,            # Clip images to [-1, 1] as denoise.py's PNGs are (False for data that are not images).
    ):
        if mode not in MODES:
            raise UserError(f'--mode={mode}: expected one of {", ".join(MODES)}')
        if dtype == torch.uint8 and not clip:
            raise ValueError('a uint8 buffer holds images: it needs clip=True')
        self.observations = observations
        self.labels = labels
        self.mode = mode
        self.num_steps = int(num_steps)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.max_batch = int(max_batch)
        self.clip = bool(clip)
        self.images = torch.zeros([len(observations), *observations.image_shape], dtype=dtype, device=storage)
        self.position = 0  # Images denoised so far in the stream, the first pass included.

    def __len__(self) -> int:
        return len(self.observations)

    # Denoise the observations at stream `positions` with `net` (positions of
    # distinct observations); returns [B, C, H, W] float32 on the device.
    def _backward(self, net: torch.nn.Module, positions: np.ndarray) -> torch.Tensor:
        index = positions % len(self)
        y = self.observations.load(index).to(self.device)
        labels = None if self.labels is None else self.labels[torch.from_numpy(index)].to(self.device)
        sigmas = self.observations.sigmas(index)
        level = float(sigmas[0]) if np.all(sigmas == sigmas[0]) else torch.from_numpy(sigmas)  # One, or one per image.
        rnd = StackedRandomGenerator(self.device, image_seeds(self.seed, positions))
        x = backward_sample(net, y, level, labels, mode=self.mode, randn_like=rnd.randn_like, num_steps=self.num_steps)
        return (x.clip(-1, 1) if self.clip else x).to(torch.float32)

    def denoise(self, net: torch.nn.Module, positions: Sequence[int], progress: bool = False) -> int:
        """Denoise the observations at stream `positions` (distinct observations) and store them.
        Collective: every process calls it with the same positions and denoises its own disjoint,
        contiguous slice of each chunk; the slices are then exchanged, so that every process holds
        the same buffer. Returns the number of images this process denoised."""
        rank, world_size = dist.get_rank(), dist.get_world_size()
        positions = np.asarray(positions, dtype=np.int64)
        chunk = self.max_batch * world_size
        mine_total = 0
        disable = None if progress and rank == 0 else True  # None: tqdm shows the bar on a terminal only.
        with tqdm.tqdm(total=len(positions), unit='img', desc='fill', disable=disable) as bar:
            for start in range(0, len(positions), chunk):
                part = positions[start:start + chunk]
                slices = np.array_split(part, world_size)
                mine = slices[rank]
                if len(mine):
                    x = self._backward(net, mine)
                else:
                    x = torch.zeros([0, *self.images.shape[1:]], dtype=torch.float32, device=self.device)
                x = _gather_rows(x, [len(s) for s in slices])
                index = torch.from_numpy(part % len(self)).to(self.images.device)
                self.images[index] = self.encode(x).to(self.images.device)
                mine_total += len(mine)
                bar.update(len(part))
        return mine_total

    def fill(self, net: torch.nn.Module, progress: bool = False) -> int:
        """Denoise every observation once (the stream's first pass); returns this process's count."""
        self.position = 0
        count = self.denoise(net, np.arange(len(self)), progress=progress)
        self.position = len(self)
        return count

    def refresh(self, net: torch.nn.Module, count: int) -> int:
        """Denoise the next `count` observations in round-robin order (at most the whole set)."""
        count = min(int(count), len(self))
        done = self.denoise(net, np.arange(self.position, self.position + count))
        self.position += count
        return done

    # Images in [-1, 1] (float32) to the buffer's dtype, and back.
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return to_uint8(x) if self.images.dtype == torch.uint8 else x.to(self.images.dtype)

    @staticmethod
    def decode(rows: torch.Tensor) -> torch.Tensor:
        return images_to_float(rows)

    # State as plain tensors and numbers (torch.load(weights_only=True) reads it),
    # the images in the buffer's dtype: N*C*H*W bytes for uint8.
    def state_dict(self) -> dict[str, Any]:
        return dict(images=self.images.to('cpu', copy=True), position=self.position, seed=self.seed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        images = state['images']
        if list(images.shape) != list(self.images.shape):
            raise ValueError(f'the buffer holds {list(images.shape)}, the observations need {list(self.images.shape)}')
        if images.dtype != self.images.dtype:  # A state of another --buffer-dtype: converted.
            images = self.encode(self.decode(images))
        self.images.copy_(images)
        self.position = int(state['position'])
        self.seed = int(state['seed'])

#----------------------------------------------------------------------------
# clean ∪ buffer for the data loader. Items are (image, label, index): index
# < len(clean) is a clean image; the others stand for buffer entries (with
# xflip: their mirrored copies too) and carry a placeholder image, replaced by
# OnlineSFBD.compose() in the training process, where the buffer lives.

class OnlineUnion(torch.utils.data.Dataset):
    def __init__(self, clean: Any, labels: np.ndarray, xflip: bool, observations_fingerprint: list[dict]):
        self.clean = clean
        self.observations_fingerprint = observations_fingerprint
        self.labels = labels                            # [N, label_dim] float32, the observations' labels.
        self.num_clean = len(clean)
        self.num_buffer = len(labels) * (2 if xflip else 1)
        first = clean[0][0]
        self.placeholder = np.zeros_like(first)         # Same dtype as clean images, so batches collate.

    def __len__(self) -> int:
        return self.num_clean + self.num_buffer

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray, int]:
        if idx < self.num_clean:
            image, label = self.clean[idx]
            return image, label, idx
        return self.placeholder.copy(), self.labels[(idx - self.num_clean) % len(self.labels)].copy(), idx

    # What the training loop asks of its dataset.
    @property
    def resolution(self) -> int:
        return self.clean.resolution

    @property
    def num_channels(self) -> int:
        return self.clean.num_channels

    @property
    def label_dim(self) -> int:
        return self.clean.label_dim

    def fingerprint(self) -> list[dict]:
        """The clean data's and the observations' (Dataset.fingerprint), so that a run is not
        continued on other data by mistake."""
        return self.clean.fingerprint() + self.observations_fingerprint

    def close(self) -> None:
        self.clean.close()

#----------------------------------------------------------------------------
# A run too short for the method: the denoised images are those of the
# starting network until one refresh pass is done, and count fully only once
# the weight ramp has ended. Said in train.py's log and in sfbd.rounds' summary.

def shortfall_note(refresh_passes: float, loss_weight: float) -> str | None:
    missing = [what for what, short in (('one whole refresh pass', refresh_passes < 1),
                                        ('the end of the weight ramp', loss_weight < 1)) if short]
    if not missing:
        return None
    return (f'Note: the Online SFBD run ended before {" and ".join(missing)}: {refresh_passes:.2f} '
            f'refresh passes over the observations, buffer loss weight {loss_weight:.3f} of 1. Its denoised data have '
            'not taken full effect; a longer --duration (or a shorter --online-rampup, a larger --refresh-batch) would.')

#----------------------------------------------------------------------------
# The refreshes of a run, in passes over the observations: after every m-th of
# the run's T optimizer steps, floor(T / m) refreshes of min(r, N)
# observations each; the fill's pass is not counted. `--refresh-passes P`
# states the passes instead of r: the smallest r that makes at least P passes,
# ceil(P * N / floor(T / m)), at the run's whole length T (so that a resumed
# run, whose remaining length is shorter, plans the same r).

def run_steps(total_kimg: float, batch_size: int, start_kimg: float = 0) -> int:
    """Optimizer steps of a train.py run of `total_kimg` (whole batches until it is reached)."""
    return trained_images(total_kimg, batch_size, start_kimg) // int(batch_size)

def refresh_plan(num_observations: int, refresh_every: int, refresh_batch: int, total_steps: int) -> dict[str, Any]:
    """The refreshes a run of `total_steps` steps makes, and the passes over the observations they add up to."""
    refreshes = int(total_steps) // int(refresh_every)
    batch = min(int(refresh_batch), int(num_observations))
    return dict(num_observations=int(num_observations), total_steps=int(total_steps), refresh_every=int(refresh_every),
                refresh_batch=batch, refreshes=refreshes, refresh_passes=refreshes * batch / num_observations)

def refresh_batch_for_passes(passes: float, num_observations: int, refresh_every: int, total_steps: int) -> int:
    """The refresh batch r that makes at least `passes` refresh passes in a run of `total_steps` steps."""
    refreshes = int(total_steps) // int(refresh_every)
    if refreshes == 0:
        raise UserError(f'--refresh-passes={passes:g}: the run makes no refresh: its {total_steps} steps are fewer than '
                        f'--refresh-every={refresh_every}')
    batch = max(math.ceil(round(passes * num_observations / refreshes, 9)), 1)
    if batch > num_observations:
        raise UserError(f'--refresh-passes={passes:g}: the run\'s {refreshes} refreshes (every {refresh_every} of its '
                        f'{total_steps} steps) make at most {refreshes:g} passes; give a smaller --refresh-every or a longer --duration')
    return batch

# The default refresh batch: the one of DEFAULT_REFRESH_PASSES where the run
# is long enough for them; else every observation per refresh (a run of
# fewer than two refreshes) or, in a run without a refresh, `batch_size`
# (which sets the ramp's length). Returns r and the line that says so, or None.

def default_refresh_batch(num_observations: int, refresh_every: int, total_steps: int,
                          batch_size: int) -> tuple[int, str | None]:
    refreshes = int(total_steps) // int(refresh_every)
    if refreshes == 0:
        return int(batch_size), None  # No refresh: shortfall_note says what that means.
    try:
        return refresh_batch_for_passes(DEFAULT_REFRESH_PASSES, num_observations, refresh_every, total_steps), None
    except UserError:
        return int(num_observations), (f'Online SFBD: the run\'s {refreshes} refreshes (every {refresh_every} of its '
                                       f'{total_steps} steps) fall short of the default {DEFAULT_REFRESH_PASSES:g} refresh '
                                       f'passes; each refreshes all {num_observations} observations.')

#----------------------------------------------------------------------------
# Where the buffer lives: on the training device when it takes at most a
# quarter of the device memory free at start, else in host memory.

def buffer_storage(device: torch.device, nbytes: int) -> torch.device:
    if device.type != 'cuda':
        return device
    free, _total = torch.cuda.mem_get_info(device)
    return device if nbytes <= free // 4 else torch.device('cpu')

#----------------------------------------------------------------------------
# The training loop's side of Online SFBD: extra data of the training loop
# (training/extra_data.py). Constructed by the loop from the plain-data
# options of train.py (`online_kwargs`) plus what only the loop knows (the
# clean dataset, device, batch sizes).

class OnlineSFBD(ExtraData):
    def __init__(self,
        noisy:          Sequence[str],                  # Observation sets (train.py --noisy), read as one.
        clean:          Any,                            # The clean dataset of the run (training.dataset.Dataset).
        refresh_every:  int = DEFAULTS['refresh_every'],# Optimizer steps between refreshes (the paper's m).
        refresh_batch:  int = 512,                      # Observations denoised per refresh, all processes together.
        refresh_passes: float | None = None,            # The passes asked for (train.py --refresh-passes or its default), from which train.py derived refresh_batch; None = not asked.
        rampup_kimg:    float | None = None,            # Length of the loss-weight ramp of buffer images; None = one refresh pass.
        mode:           str = DEFAULTS['mode'],         # Backward sampler: 'ode' (the release's) or 'sde'.
        num_steps:      int = DEFAULTS['num_steps'],    # Steps of the grid cut at sigma (denoise.py --steps).
        refresh_net:    str = DEFAULTS['refresh_net'],  # Network of the fill and the refreshes: 'ema' or 'raw'.
        buffer_dtype:   str = DEFAULTS['buffer_dtype'], # Precision of the buffer: 'uint8' (as denoise.py's PNGs), 'float16' or 'float32'.
        xflip:          bool = False,                   # Mirrored copies of the buffer images too (train.py --xflip).
        cache:          bool = False,                   # Keep the observations in memory once read (train.py --cache).
        seed:           int = 0,                        # Seed of the refreshes' per-image noise.
        batch_size:     int = 512,                      # Images per optimizer step, all processes together.
        batch_gpu:      int = 64,                       # Most images per pass on one device: also the denoising batch.
        device:         torch.device | str = 'cpu',     # The training device.
    ):
        if refresh_net not in REFRESH_NETS:
            raise UserError(f'--refresh-net={refresh_net}: expected one of {", ".join(REFRESH_NETS)}')
        if buffer_dtype not in BUFFER_DTYPES:
            raise UserError(f'--buffer-dtype={buffer_dtype}: expected one of {", ".join(BUFFER_DTYPES)}')
        if refresh_every < 1 or refresh_batch < 1:
            raise UserError('--refresh-every and --refresh-batch must be at least 1')
        device = torch.device(device)
        self.device = device
        self.observations = Observations(noisy, cache=cache)
        if self.observations.image_shape != list(clean.image_shape):
            raise UserError(f'--noisy: observations are {"x".join(map(str, self.observations.image_shape))}, but the '
                            f'clean data (--data) are {"x".join(map(str, clean.image_shape))}')
        sigma_max = self.observations.sigma_range[1]
        if sigma_max > SAMPLER_SIGMA_MAX:
            raise UserError(f'--noisy: noise level {sigma_max:g} is above the highest noise level of the sampler '
                            f'({SAMPLER_SIGMA_MAX:g})')
        labels = self.observations.label_vectors(clean.label_dim, clean.has_onehot_labels)
        num = len(self.observations)
        dtype = BUFFER_DTYPES[buffer_dtype]
        nbytes = num * int(np.prod(clean.image_shape)) * dtype.itemsize
        self.buffer = DenoisedBuffer(self.observations, torch.from_numpy(labels) if clean.label_dim else None, mode=mode,
                                     num_steps=num_steps, seed=seed, dtype=dtype, device=device,
                                     storage=buffer_storage(device, nbytes), max_batch=batch_gpu)
        self.dataset = OnlineUnion(clean, labels, xflip, self.observations.fingerprint())
        self.refresh_every = int(refresh_every)
        self.refresh_batch = min(int(refresh_batch), num)
        steps_per_pass = -(-num // self.refresh_batch) * self.refresh_every
        self.rampup_nimg = steps_per_pass * batch_size if rampup_kimg is None else rampup_kimg * 1000
        self.refresh_net = refresh_net
        self.refresh_passes = refresh_passes
        self.batch_size = int(batch_size)
        self.plan: dict[str, Any] | None = None  # The refreshes of the whole run (refresh_plan), set by begin().
        # The options that shape the results, compared with a training state's on resume.
        self.options = dict(noisy=list(self.observations.paths), num_observations=num, refresh_every=self.refresh_every,
                            refresh_batch=self.refresh_batch, rampup_nimg=self.rampup_nimg, mode=mode,
                            num_steps=int(num_steps), refresh_net=refresh_net, buffer_dtype=buffer_dtype, xflip=bool(xflip))
        self.step = 0               # Optimizer steps of the online run.
        self.start_nimg: int | None = None  # Images trained on when the online run began.
        self._restored = False
        self._tick_refresh_sec = 0.0
        self._tick_refreshed = 0

    def _network(self, net: torch.nn.Module, ema: torch.nn.Module) -> torch.nn.Module:
        return ema if self.refresh_net == 'ema' else net

    # Denoise with `which` ('fill' or 'refresh'), the network in eval mode and
    # the run's random generators untouched (the refresh has its own streams).
    def _run(self, net: torch.nn.Module, which: str) -> int:
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
                if which == 'fill':
                    return self.buffer.fill(net, progress=True)
                return self.buffer.refresh(net, self.refresh_batch)
        finally:
            net.train(was_training)
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)  # Honest timing; once per refresh.

    def begin(self, net: torch.nn.Module, ema: torch.nn.Module, cur_nimg: int, total_nimg: int | None = None) -> None:
        """Before the first step: state the refreshes the run will make until `total_nimg` (None:
        not stated), and fill the buffer with the starting network unless a training state restored it."""
        network = self._network(net, ema)
        grid = denoising_sigmas(network, self.observations.sigma_range[1], self.buffer.num_steps)
        nfe = backward_nfe(len(grid) - 1, self.buffer.mode)
        dist.print0(f'Online SFBD: {len(self.buffer)} observations ({self.observations.describe_sigmas()}), a '
                    f'{str(self.buffer.images.dtype).removeprefix("torch.")} buffer on {self.buffer.images.device} '
                    f'({self.buffer.images.numel() * self.buffer.images.element_size() / 2**20:.1f} MiB); every '
                    f'{self.refresh_every} steps {self.refresh_batch} images denoised again with the '
                    f'{"EMA" if self.refresh_net == "ema" else "raw"} network ({self.buffer.mode.upper()}, up to {nfe} network '
                    f'evaluations per image); buffer loss weight 0 -> 1 over {self.rampup_nimg / 1000:g} kimg.')
        if not self._restored:
            self.start_nimg = int(cur_nimg)
        if total_nimg is not None:
            steps = run_steps(total_nimg / 1000, self.batch_size, self.start_nimg / 1000)
            self.plan = refresh_plan(len(self.buffer), self.refresh_every, self.refresh_batch, steps)
            asked = f' ({self.refresh_passes:g} asked)' if self.refresh_passes is not None else ''
            dist.print0(f'Online SFBD plan: {self.plan["refreshes"]} refreshes of {self.refresh_batch} in the run\'s '
                        f'{steps} steps, {self.plan["refresh_passes"]:.2f} refresh passes over the observations{asked}, '
                        'the fill not counted.')
        if self._restored:
            return
        start = time.time()
        dist.print0(f'Filling the buffer: denoising {len(self.buffer)} observations...')
        self._run(network, 'fill')
        dist.print0(f'Filled the buffer in {time.time() - start:.1f} s.')

    def compose(self, images: torch.Tensor, indices: torch.Tensor, cur_nimg: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the buffer images in the slots of their placeholders in a batch of (float) images
        on the device; returns the batch and the per-image loss weights [B, 1, 1, 1]."""
        slot = indices >= self.dataset.num_clean
        items = indices[slot] - self.dataset.num_clean
        rows = self.buffer.decode(self.buffer.images[(items % len(self.buffer)).to(self.buffer.images.device)].to(images.device))
        flip = (items >= len(self.buffer)).to(images.device)
        rows = torch.where(flip[:, None, None, None], rows.flip(-1), rows)
        images[slot.to(images.device)] = rows
        weight = ramp_weight(cur_nimg - self.start_nimg, self.rampup_nimg)
        weights = torch.where(slot, weight, 1.0).to(images.device, torch.float32)
        return images, weights.reshape(-1, 1, 1, 1)

    def after_step(self, net: torch.nn.Module, ema: torch.nn.Module) -> None:
        """After an optimizer step (and the EMA update): refresh when it is time."""
        self.step += 1
        if self.step % self.refresh_every != 0:
            return
        start = time.time()
        self._tick_refreshed += self._run(self._network(net, ema), 'refresh')
        self._tick_refresh_sec += time.time() - start

    def end_tick(self, stats: training_stats.Collector, tick_sec: float, cur_nimg: int) -> list[str]:
        """Report the tick's refresh statistics to `stats`; returns the fields for the tick line."""
        share = self._tick_refresh_sec / tick_sec if tick_sec > 0 else 0.0
        stats.report0('Timing/refresh_sec', self._tick_refresh_sec)
        stats.report0('Timing/refresh_share', share)
        stats.report('Online/refreshed', torch.ones(self._tick_refreshed))
        stats.report0('Online/passes', self.buffer.position / len(self.buffer))
        weight = ramp_weight(cur_nimg - self.start_nimg, self.rampup_nimg)
        stats.report0('Online/loss_weight', weight)
        self._tick_refresh_sec, self._tick_refreshed = 0.0, 0
        return [f'refresh {f"{100 * share:.1f}%":<6s}', f'wbuf {weight:<5.3f}']

    def progress(self, cur_nimg: int) -> dict[str, float]:
        """How far the online run has come: refresh passes over the observations (the fill not
        counted), and the current loss weight of buffer images."""
        return dict(refresh_passes=self.refresh_passes_made,
                    loss_weight=ramp_weight(cur_nimg - self.start_nimg, self.rampup_nimg))

    @property
    def refresh_passes_made(self) -> float:
        """Passes over the observations since the fill (the first pass, by the clean-only network)."""
        return self.buffer.position / len(self.buffer) - 1

    def summary(self) -> str:
        """The line that states the refresh passes made, against those planned."""
        made = self.refresh_passes_made
        planned = f' of the {self.plan["refresh_passes"]:.2f} planned' if self.plan is not None else ''
        return (f'Online SFBD: {made:.2f} refresh passes{planned} over the {len(self.buffer)} observations, '
                f'the fill not counted ({self.buffer.position} observations denoised in all).')

    def shortfall(self, cur_nimg: int) -> str | None:
        """A note for a run that ends at `cur_nimg` before one whole refresh pass or before the
        end of the weight ramp; None when it has done both."""
        return shortfall_note(**self.progress(cur_nimg))

    def final_lines(self, cur_nimg: int) -> list[str]:
        """The refresh passes made, against the plan; and a note for a run too short for them."""
        note = self.shortfall(cur_nimg)
        return [self.summary()] + ([note] if note is not None else [])

    # State: the buffer (plain tensors), its position, the step count, the
    # start of the ramp, and the options for comparison on resume.
    def state_dict(self) -> dict[str, Any]:
        return dict(self.buffer.state_dict(), step=self.step, start_nimg=self.start_nimg, options=dict(self.options))

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        old = state.get('options', {})
        if int(old.get('num_observations', -1)) != len(self.buffer):
            raise UserError(f'{where}: its Online SFBD buffer holds {old.get("num_observations")} observations, --noisy '
                            f'has {len(self.buffer)}; give the same --noisy, or start a new run')
        try:
            self.buffer.load_state_dict(state)
        except ValueError as e:
            raise UserError(f'{where}: {e}') from None
        self.step = int(state['step'])
        self.start_nimg = int(state['start_nimg'])
        self._restored = True
        changed = sorted(k for k in self.options if old.get(k) != self.options[k])
        if changed:
            dist.print0(f'Note: Online SFBD options changed since the training state was written ({", ".join(changed)}); '
                        'continuing with the new ones.')

#----------------------------------------------------------------------------
