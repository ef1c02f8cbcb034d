"""SFBD end to end in about a quarter of an hour on a CPU, the library of `python -m sfbd.demo`
(sfbd/demo.py is its command line).

The demo makes its own data (no download): 8x8 RGB pictures of one or two soft coloured blobs at
random places. Of 2048 such images, 32 are released clean and the others only as noisy
observations (sigma 0.4). It then

  (a) pretrains a small DDPM++ on the 32 clean images,
  (b) runs 3 SFBD rounds: denoise the observations with the current model, fine-tune it on clean +
      denoised images,
  (b') runs Online SFBD from the same pretrained model instead: one training run as long as the 3
      rounds together, denoising as many images as they do, but a few at a time as it trains,
  (c) trains a naive model on the clean images and the observations as if all were clean,

using the repository's own train.py and denoise.py (as subprocesses, through sfbd.rounds) and
generate.py's sampler. Each model generates 1000 images, and a table gives their Frechet distance
to 2000 held-out images that no model has seen, computed on the pixels (lower is better), and the
wall and CPU time each took after the pretraining. Outputs in --outdir: the datasets, the runs
(log.txt holds their output), results.json, demo.png: original | observation | denoised triplets,
then samples of each model, and report/report.html, the report of the SFBD run (sfbd.report:
distance and copies of the clean and source images per round, the training loss, samples). A rerun
reuses finished steps (and the times measured when they ran).
Why these settings and this metric, and how the numbers vary with the seed: docs/sfbd.md.
"""

from __future__ import annotations

import json
import os
import time

# Sleep rather than spin while waiting for other OpenMP threads: on a CPU shared with other work,
# PyTorch's default busy-waiting slows these small networks down by up to a hundred times. Set
# before torch is imported, and inherited by the train.py and denoise.py runs.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from dnnlib.outputs import OutputDir, ToolOutputs, read_record
from dnnlib.util import EasyDict, atomic_write, save_png
from sfbd.cost import add_costs, network_cost, observation_nfe, trained_images
from sfbd.dataset_commands import choose_clean, split_dataset
from sfbd.grids import comparison_grid, load_png
from sfbd.memorization import sample_images
from sfbd.observations import DatasetWriter, ObservationSet, dataset_fname, encode_png
from torch_utils import frechet
from torch_utils.distributed import resolve_device
from torch_utils.persistence import load_network
from metrics.fid import save_ref_stats
from tools import report, rounds
from training.sampler import to_uint8

#----------------------------------------------------------------------------
# Settings: small enough for two CPU cores, large enough for a clear ranking
# (docs/sfbd.md has the spread over seeds and the checks behind them).

DEMO = EasyDict(
    resolution      = 8,        # Image size.
    num_images      = 2048,     # Images of the copyright holders: split into clean and noisy.
    num_heldout     = 2000,     # Held-out images of the same distribution, for the metric only.
    clean_count     = 32,       # Images released clean (1.6%).
    sigma           = 0.4,      # Noise level of the observations, in [-1, 1] pixel units.
    num_rounds      = 3,        # SFBD rounds after pretraining.
    pretrain_mimg   = 0.040,    # Pretraining length, millions of images (also the naive model's).
    round_mimg      = 0.012,    # Length of each update round.
    num_samples     = 1000,     # Generated images per model for the metric.
    sample_steps    = 12,       # Sampler steps for generating them.
)

# A small DDPM++ (382k parameters) and a short, fast schedule: no warm-up, a
# 2 kimg EMA half-life, no augmentation or dropout.
TRAIN_ARGS = ['--arch=ddpmpp', '--cbase=16', '--cres=1,2', '--batch=128', '--lr=2e-3', '--lr-rampup=0',
              '--ema=0.002', '--augment=0', '--dropout=0', '--tick=10', '--snap=1000', '--dump=1000']

# Online SFBD at the rounds' cost with train.py's defaults: 3 x 12 kimg are 282 steps of 128 images,
# so 14 refreshes every m = 20 steps (the paper's m), and the default 2 refresh passes make them 288
# images each; with the fill's pass they are the rounds' 3 passes of denoising.
ONLINE_ARGS: list[str] = []

#----------------------------------------------------------------------------
# The data: one or two soft round blobs per image, at uniform random places,
# with random widths and colours, on a black background.

def draw_blobs(num_images: int, resolution: int, seed: int) -> np.ndarray:
    """[N, 3, R, R] uint8 images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:resolution, 0:resolution] + 0.5
    images = np.zeros([num_images, 3, resolution, resolution])
    for i in range(num_images):
        for _blob in range(rng.integers(1, 3)):
            cx, cy = rng.uniform(1, resolution - 1, size=2)
            width = rng.uniform(0.8, 1.6)
            colour = rng.uniform(0, 1, size=3)
            colour /= colour.max()
            bump = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width ** 2))
            images[i] = np.maximum(images[i], colour[:, None, None] * bump[None])
    return np.clip(np.round(images * 255), 0, 255).astype(np.uint8)

def write_image_dataset(path: str, images: np.ndarray) -> None:
    writer = DatasetWriter(path)
    try:
        for i, image in enumerate(images):
            writer.add(dataset_fname(i, '.png'), encode_png(image))
        writer.commit(dict(labels=None))
    except BaseException:
        writer.abort()
        raise

def read_pngs(path: str, count: int | None = None) -> np.ndarray:
    """The first `count` images of a PNG dataset directory, [N, C, H, W] uint8."""
    fnames = sorted(os.path.relpath(os.path.join(root, f), path) for root, _dirs, files in os.walk(path)
                    for f in files if f.endswith('.png'))[:count]
    return np.stack([load_png(os.path.join(path, fname)) for fname in fnames])

#----------------------------------------------------------------------------
# The metric: the Frechet distance (FID's formula) between Gaussians fitted
# to the raw pixels in [-1, 1] units. At 8x8 the pixels are the features: no
# detector network, nothing to download, and the Gaussian fit is exactly what
# the blobs' positions, sizes and colours change.

def pixel_features(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 127.5 - 1

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    return frechet.frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))

def sample_model(network_pkl: str, num_samples: int, num_steps: int, device: torch.device) -> np.ndarray:
    """Images [N, C, H, W] uint8 from generate.py's sampler, seeds 0..N-1."""
    return sample_images(load_network(network_pkl).to(device), list(range(num_samples)), device, 500,
                         num_steps=num_steps)

#----------------------------------------------------------------------------
# The demo.

def run_demo(outdir: str, device: str | None = None, seed: int = 0, long_baseline: bool = False,
             verbose: bool = True, settings: dict | None = None) -> dict:
    """Run (or continue) the demo in `outdir`; returns the results written to results.json.
    `settings` changes entries of DEMO (e.g. sigma, clean_count) for a harder or easier problem."""
    unknown = sorted(set(settings or {}) - set(DEMO))
    if unknown:
        raise ValueError(f'run_demo: unknown settings {unknown}; known: {sorted(DEMO)}')
    cfg = EasyDict(DEMO, **(settings or {}))
    changed = {key: value for key, value in cfg.items() if value != DEMO[key]}  # Recorded with the seed.
    start = time.time()
    def say(text: str) -> None:
        if verbose:
            print(f'[{time.time() - start:4.0f} s] {text}', flush=True)
    dev = resolve_device(device)
    train_args = [*TRAIN_ARGS, f'--seed={seed}', f'--device={dev}']
    total_mimg = cfg.pretrain_mimg + cfg.num_rounds * cfg.round_mimg

    # The owners' images, split into clean images and observations.
    data = os.path.join(outdir, 'data')
    source, clean, noisy = (os.path.join(data, name) for name in ('source', 'clean', 'noisy'))
    ToolOutputs('sfbd.demo', [OutputDir(outdir, '--outdir', 'demo_options.json')]).claim(
        dict(seed=seed, **changed), has_outputs=lambda: os.path.isdir(data)).claim()
    if not os.path.isdir(noisy):
        say(f'Drawing {cfg.num_images} images; {cfg.clean_count} stay clean, the others become observations '
            f'with noise sigma={cfg.sigma}')
        if not os.path.isdir(source):
            write_image_dataset(source, draw_blobs(cfg.num_images, cfg.resolution, seed=2 * seed))
        # Public stand-in images: the noise may be reproducible, so that the demo's figures are.
        split_dataset(source, clean, noisy, cfg.sigma, seed, clean_count=cfg.clean_count, noise_seed=seed,
                      verbose=False)

    # Training: SFBD's pretraining and rounds (one round at a time, to time
    # each), Online SFBD from the same pretrained model, the naive model, and
    # on request a clean-only model trained as long as SFBD in total.
    sfbd_dir = os.path.join(outdir, 'sfbd')
    timer = StepTimer(os.path.join(outdir, 'timings.json'))
    with open(os.path.join(outdir, 'log.txt'), 'a', encoding='utf-8') as log:
        say(f'SFBD: pretraining on the clean images, then {cfg.num_rounds} rounds of denoise.py + train.py '
            f'--transfer (their output: {log.name})')
        for k in range(cfg.num_rounds + 1):
            record = timer.run(f'round {k}', lambda k=k: rounds.run_rounds(
                sfbd_dir, clean, noisy, k, cfg.pretrain_mimg, cfg.round_mimg, train_args=train_args,
                denoise_args=[f'--device={dev}'], log=log, announce=False))  # The demo goes on: no "Done" line.
        pretrained = os.path.join(sfbd_dir, record['rounds'][0]['snapshot'])
        snapshots = [('(a) clean only (pretraining)', pretrained, timer.total(['round 0']))]
        snapshots += [(f'(b) SFBD round {e["round"]}', os.path.join(sfbd_dir, e['snapshot']),
                       timer.total([f'round {j}' for j in range(1, e['round'] + 1)])) for e in record['rounds'][1:]]
        cost = record.get('cost')  # None where a step left no training options (its cost is unknown).
        costs = [None] * (cfg.num_rounds + 1) if cost is None else \
            [cost['pretraining'], *(add_costs(cost['per_round'][:k]) for k in range(1, cfg.num_rounds + 1))]
        runs = [('(b\') Online SFBD, as long as the rounds', 'online', [clean], cfg.num_rounds * cfg.round_mimg,
                 [f'--noisy={noisy}', f'--transfer={pretrained}', *ONLINE_ARGS]),
                ('(c) naive: noisy as if clean', 'naive', [clean, noisy], cfg.pretrain_mimg, ['--allow-noisy'])]
        if long_baseline:
            runs.append(('(a\') clean only, as long as SFBD', 'clean-long', [clean], total_mimg, []))
        for name, run_name, datasets, duration, extra in runs:
            run_dir = os.path.join(outdir, run_name)
            if not os.path.isfile(os.path.join(run_dir, 'finished')):
                say(f'{name}: train.py, {duration * 1000:g} kimg')
                timer.run(run_name, lambda: rounds.train_step(run_dir, datasets, duration, [*train_args, *extra], log=log))
                open(os.path.join(run_dir, 'finished'), 'w').close()
            snapshots.append((name, rounds.final_snapshot(run_dir), timer.total([run_name])))
            costs.append(run_cost(run_dir, noisy, pretrained))

    # Every model against the held-out images.
    say(f'Sampling {cfg.num_samples} images from each model; Frechet distance to {cfg.num_heldout} held-out images')
    truth = pixel_features(draw_blobs(cfg.num_heldout, cfg.resolution, seed=2 * seed + 1))
    rows, samples = [], []
    for (name, snapshot, times), cost in zip(snapshots, costs):
        images = sample_model(snapshot, cfg.num_samples, cfg.sample_steps, dev)
        samples.append((name, images))
        rows.append(dict(model=name, snapshot=os.path.relpath(snapshot, outdir),
                         fd=frechet_distance(pixel_features(images), truth),
                         seconds=times and times['wall'], cpu_seconds=times and times['cpu'],
                         training_image_passes=cost and cost['training_image_passes'],
                         denoising_evaluations=cost and cost['denoising_evaluations']))
    obs = ObservationSet(noisy)
    observations = obs.load(list(range(len(obs))))[0].numpy().reshape(len(obs), -1).astype(np.float64)
    obs.close()
    scale = dict(clean_images=frechet_distance(pixel_features(read_pngs(clean)), truth),
                 observations=frechet_distance(observations, truth),
                 fresh_true_images=frechet_distance(pixel_features(draw_blobs(cfg.num_samples, cfg.resolution,
                                                                              seed=2 * seed + 2)), truth))

    # The picture.
    denoised = os.path.join(sfbd_dir, record['rounds'][-1]['denoised']) if cfg.num_rounds else None
    save_picture(os.path.join(outdir, 'demo.png'), source, obs, denoised, samples, seed, cfg.num_images, cfg.clean_count)

    # The report of the SFBD run: the same distance per round (against the held-out images'
    # statistics), copies of the clean images and of all the owners' originals, loss, samples.
    say('Writing the report of the SFBD run')
    heldout_stats = os.path.join(data, 'heldout-pixels.npz')
    save_ref_stats(heldout_stats, truth.mean(axis=0), np.cov(truth, rowvar=False))
    report.write_report(sfbd_dir, os.path.join(outdir, 'report'), ref=heldout_stats, fid_features='pixel',
                        train=[clean, source], features='pixel', num=cfg.num_samples, device=dev, verbose=False,
                        samples={os.path.abspath(snapshot): images for (_name, snapshot, _times), (_, images)
                                 in zip(snapshots, samples)}, num_steps=cfg.sample_steps)

    results = dict(settings=dict(cfg, seed=seed, train_args=train_args, online_args=ONLINE_ARGS), rows=rows, scale=scale,
                   seconds=round(time.time() - start, 1))
    with atomic_write(os.path.join(outdir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    if verbose:
        print_table(results)
        print(f'Pictures: {os.path.join(outdir, "demo.png")}; report of the SFBD run: '
              f'{os.path.join(outdir, "report", "report.html")}')
    return results

# The cost of one train.py run of the demo (sfbd/cost.py): its training, and
# for Online SFBD the fill and refreshes it made (from its last tick).
def run_cost(run_dir: str, noisy: str, pretrained: str) -> dict:
    options = read_record(os.path.join(run_dir, 'training_options.json'))
    trained = trained_images(options['total_kimg'], options['batch_size'])
    online = options.get('online_kwargs')
    if online is None:
        return network_cost(trained)
    obs = ObservationSet(noisy)
    nfe = observation_nfe(obs.sigmas, online['mode'], online['num_steps'], net=load_network(pretrained))
    obs.close()
    passes = (rounds.online_progress(run_dir) or {}).get('refresh_passes', 0)
    return network_cost(trained, nfe, round((passes + 1) * len(nfe)))

def print_table(results: dict) -> None:
    print()
    print(f'{"model":<40} {"Frechet distance":>16} {"wall s":>8} {"CPU s":>7} {"train img":>10} {"denoise NFE":>12}')
    print('-' * 98)
    for row in results['rows']:
        times = ['-' if row.get(key) is None else f'{row[key]:.0f}' for key in ('seconds', 'cpu_seconds')]
        cost = ['-' if row.get(key) is None else f'{row[key]:,}' for key in ('training_image_passes', 'denoising_evaluations')]
        print(f'{row["model"]:<40} {row["fd"]:>16.2f} {times[0]:>8} {times[1]:>7} {cost[0]:>10} {cost[1]:>12}')
    print('-' * 98)
    for key, label in (('clean_images', f'the {results["settings"]["clean_count"]} clean images themselves'),
                       ('observations', 'the noisy observations themselves'),
                       ('fresh_true_images', 'fresh true images (noise floor)')):
        print(f'{"for scale: " + label:<52} {results["scale"][key]:>20.2f}')
    print('Distances to held-out images, lower is better. Times (wall; CPU of the subprocesses) and costs (training')
    print('image passes, one forward and backward each; network evaluations of denoising, sfbd/cost.py): pretraining;')
    print(f'rounds from its end, cumulative; other runs their own. {results["seconds"]:.0f} s in all.')

#----------------------------------------------------------------------------
# Wall time of the demo's steps, kept in a file so that a rerun, which skips
# finished steps, still reports the time they took when they ran.

# Besides the wall time, the CPU time of the step's subprocesses (train.py,
# denoise.py and their data loaders): on a CPU shared with other work it
# measures the compute, which the wall time does not.

class StepTimer:
    def __init__(self, path: str):
        self.path = path
        self.times: dict[str, dict[str, float]] = {}  # name -> {"wall": s, "cpu": s}
        if os.path.isfile(path):
            with open(path, 'r', encoding='utf-8') as f:
                self.times = json.load(f)

    def run(self, name: str, step):
        """Run `step()`; the first run that returns records its times under `name`."""
        start, start_cpu = time.time(), _children_cpu_seconds()
        result = step()
        if name not in self.times:
            self.times[name] = dict(wall=round(time.time() - start, 1), cpu=round(_children_cpu_seconds() - start_cpu, 1))
            with atomic_write(self.path, 'w') as f:
                json.dump(self.times, f, indent=2)
        return result

    def total(self, names: list[str]) -> dict[str, float] | None:
        if not all(name in self.times for name in names):
            return None
        return {key: round(sum(self.times[name][key] for name in names), 1) for key in ('wall', 'cpu')}

def _children_cpu_seconds() -> float:
    times = os.times()  # The children's times count once they have ended (0 where the OS keeps none).
    return times.children_user + times.children_system

#----------------------------------------------------------------------------
# The picture: original | observation | denoised for the first observations
# (the demo owns the originals; a real release would not), then a row of
# samples per model, each row labelled with PIL's built-in font.

def save_picture(path: str, source: str, obs: ObservationSet, denoised: str | None, samples: list[tuple[str, np.ndarray]],
                 seed: int, num_images: int, num_clean: int, count: int = 16, zoom: int = 4) -> None:
    noisy_sources = np.setdiff1d(np.arange(num_images), choose_clean(num_images, num_clean, seed))[:count]
    columns = [read_pngs(source)[noisy_sources], to_uint8(obs.load(list(range(count)))[0]).numpy()]
    title = 'original | observation'
    if denoised is not None:
        columns.append(read_pngs(denoised, count))  # Named like the observations, so in the same order.
        title += ' | denoised (last round)'
    parts = [(title, comparison_grid(columns, cells_per_row=4))]
    parts += [(f'samples: {name}', comparison_grid([images[:2 * count]], cells_per_row=2 * count)) for name, images in samples]

    font = PIL.ImageFont.load_default()
    width = max(grid.shape[1] for _, grid in parts) * zoom
    canvas = PIL.Image.new('RGB', (width, sum(grid.shape[0] * zoom + 18 for _, grid in parts)), 'white')
    draw, top = PIL.ImageDraw.Draw(canvas), 0
    for label, grid in parts:
        draw.text((2, top + 2), label, fill='black', font=font)
        canvas.paste(PIL.Image.fromarray(grid.repeat(zoom, axis=0).repeat(zoom, axis=1)), (0, top + 16))
        top += grid.shape[0] * zoom + 18
    save_png(path, np.asarray(canvas))

#----------------------------------------------------------------------------
