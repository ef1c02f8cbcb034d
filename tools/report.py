"""A report of an SFBD run, the library of `python -m sfbd.report --rounds=OUTDIR` (sfbd/report.py is
its command line).

Reads OUTDIR/rounds.json (written by sfbd.rounds) and scores the final snapshot of every
finished round (round 0 is the pretraining) on --num images, seeds 0 to num-1, drawn with
generate.py's sampler:

- FID against --ref (reference statistics from `fid.py ref`), computed as fid.py computes it,
  in Inception features; with --fid-features=pixel the same Frechet distance on the pixels in
  [-1, 1] units, for images too small for Inception (the demo's 8x8 ones);
- memorisation against every --train set (sfbd/memorization.py): how many samples copy an
  image of the set (nearest < threshold x second-nearest distance).

In --outdir (default OUTDIR/report) it writes report.html, which shows everything below, and:

    fid.png                  FID per round
    copies.png               copies per round, one line per --train set
    loss.png                 the training loss of every run, end to end (each run's stats.jsonl)
    samples-round-NNN.png    the first 64 samples of each round
    pairs-round-NNN.png      each round's samples most like copies, beside their nearest image
    scores.json              the scores, keyed by the snapshot's content and the settings

A later report reuses the scores of snapshots it has already scored with the same settings, so
that after one more round only that round is scored. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import time
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch

from dnnlib.outputs import OutputDir, ToolOutputs, check_distinct
from dnnlib.util import EasyDict, UserError, atomic_write, file_sha256, save_png
from sfbd import memorization as mem
from sfbd.grids import comparison_grid
from sfbd.plots import new_figure, save_figure
from tools.rounds import ONLINE_RECORD_FNAME, RECORD_FNAME, load_record
from torch_utils import distributed as dist
from torch_utils.detector import DEFAULT_DETECTOR
from torch_utils.persistence import load_network
from training.dataset import DatasetFiles
from metrics.fid import FeatureStats, calculate_fid_from_inception_stats, load_ref_stats, snapshot_kimg

SCORES_FNAME = 'scores.json'
GRID_SAMPLES = 64
DEFAULT_NUM = 50000

#----------------------------------------------------------------------------
# What decides a score besides the snapshot: the sample count and sampler,
# the FID reference and feature space, the memorisation sets and threshold.
# Reference statistics enter by content (their arrays), datasets by size and
# modification time of every file (they may be large). Sampler options at
# generate.py's defaults are left out, so that a call that leaves them unset
# and one that spells them out share their scores.

SAMPLER_DEFAULTS = dict(num_steps=18, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1)

def dataset_fingerprint(path: str) -> str:
    if os.path.isfile(path):
        stat = os.stat(path)
        return f'{stat.st_size}-{stat.st_mtime_ns}'
    files = DatasetFiles(path)  # The files a dataset reader sees: links followed, hidden files left out.
    stats = [(name, os.stat(os.path.join(path, name))) for name in files.names]
    entries = sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()

def arrays_sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype='<f8').tobytes())
    return digest.hexdigest()

def score_settings(num: int, sampler_kwargs: dict, ref: str | None, ref_stats: tuple | None, fid_features: str,
                   train: Sequence[str], features: str, threshold: float, detector_sha256: str | None) -> dict:
    fid = None
    if ref is not None:
        fid = dict(ref=ref if '://' in ref else os.path.abspath(ref), ref_sha256=arrays_sha256(*ref_stats),
                   features=fid_features, detector_sha256=detector_sha256 if fid_features == 'inception' else None)
    memo = None
    if train:
        memo = dict(features=features, threshold=threshold,
                    detector_sha256=detector_sha256 if features == 'inception' else None,
                    train=[dict(path=os.path.abspath(p), fingerprint=dataset_fingerprint(p)) for p in train])
    sampler = {k: v for k, v in sampler_kwargs.items() if v is not None and not (k in SAMPLER_DEFAULTS and v == SAMPLER_DEFAULTS[k])}
    return dict(num=num, sampler=sampler, fid=fid, memorization=memo)

def score_key(snapshot_sha256: str, settings: dict) -> str:
    return hashlib.sha256(json.dumps(dict(snapshot=snapshot_sha256, settings=settings), sort_keys=True).encode()).hexdigest()

def load_scores(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, 'r', encoding='utf-8') as f:
            scores = json.load(f)
    except ValueError:
        return {}  # A damaged cache only costs the time to score again.
    return scores if isinstance(scores, dict) else {}

def save_scores(path: str, scores: dict) -> None:
    with atomic_write(path, 'w') as f:
        json.dump(scores, f, indent=1)

#----------------------------------------------------------------------------
# Scoring one snapshot. Feature spaces, reference statistics and the
# features of the --train sets are set up once, on first use.

# A round's sample grid and pairs figure record, in a PNG text chunk, the key
# of the scores they were drawn for: figures that a run of other settings left
# (another number of samples, another threshold) are drawn again rather than
# shown under these settings.
FIGURE_KEY = 'sfbd-report-scores'

def figure_key(path: str) -> str | None:
    try:
        with PIL.Image.open(path) as image:
            return image.text.get(FIGURE_KEY)
    except (OSError, ValueError, AttributeError):
        return None

def grid_image(images: np.ndarray, min_width: int = 512) -> np.ndarray:
    """The first 64 images, 8 per row, enlarged by whole pixels to at least `min_width`."""
    grid = comparison_grid([images[:GRID_SAMPLES]], cells_per_row=8)
    zoom = max(1, -(-min_width // grid.shape[1]))
    return grid.repeat(zoom, axis=0).repeat(zoom, axis=1)

class Scorer:
    def __init__(self, settings: dict, ref_stats: tuple[np.ndarray, np.ndarray] | None, train: Sequence[mem.ImageSet],
                 device: torch.device, detector: str, detector_sha256: str | None, max_batch_size: int, verbose: bool):
        self.settings, self.ref_stats, self.train, self.device = settings, ref_stats, list(train), device
        self.detector, self.detector_sha256 = detector, detector_sha256
        self.max_batch_size, self.verbose = max_batch_size, verbose
        self.spaces: dict = {}
        self._references: list | None = None

    def space(self, kind: str) -> Any:
        if kind not in self.spaces:
            self.spaces[kind] = mem.load_feature_space(kind, self.device, self.detector, self.detector_sha256,
                                                        verbose=self.verbose)
        return self.spaces[kind]

    def references(self) -> list:
        # [(image set, features)] of the --train sets in the memorisation feature space.
        if self._references is None:
            space = self.space(self.settings['memorization']['features'])
            self._references = [(s, mem.image_features(s, space, self.max_batch_size, self.verbose,
                                                       desc=f'Features of {s.path}')) for s in self.train]
        return self._references

    def check_fid_features(self, image_shape: list[int]) -> None:
        # Before any sampling: the reference statistics must be of the features the FID uses.
        if self.ref_stats is None:
            return
        kind = self.settings['fid']['features']
        dim = self.space(kind).feature_dim(image_shape)
        if dim != self.ref_stats[0].shape[0]:
            raise UserError(f'--ref={self.settings["fid"]["ref"]}: statistics of {self.ref_stats[0].shape[0]} features, '
                            f'but --fid-features={kind} gives {dim} for images of shape {image_shape}')

    def score(self, snapshot: str, name: str, outdir: str, samples: np.ndarray | None = None, key: str = '') -> dict:
        """Scores of one snapshot; writes its sample grid (marked with the scores' `key`) and, with --train,
        its pairs figure."""
        start = time.time()
        num = self.settings['num'] if (self.ref_stats is not None or self.train) else GRID_SAMPLES
        net = None
        if samples is None or len(samples) < num:
            net = load_network(snapshot).to(self.device)
            image_shape = [net.img_channels, net.img_resolution, net.img_resolution]
        else:
            image_shape = list(samples.shape[1:])
        self.check_fid_features(image_shape)
        if net is not None:
            samples = mem.sample_images(net, list(range(num)), self.device, self.max_batch_size, self.verbose,
                                        **self.settings['sampler'])
            del net
        image_set = mem.MemoryImageSet(snapshot, [f'{seed:06d}.png' for seed in range(num)], samples[:num])
        save_png(os.path.join(outdir, f'samples-{name}.png'), grid_image(image_set.images), text={FIGURE_KEY: key})
        result: dict = dict(num=num, fid=None, memorization=None)
        features: dict = {}
        def features_in(kind: str) -> torch.Tensor:
            if kind not in features:
                features[kind] = mem.image_features(image_set, self.space(kind), self.max_batch_size, self.verbose)
            return features[kind]

        if self.ref_stats is not None:
            mu_ref, sigma_ref = self.ref_stats
            feats = features_in(self.settings['fid']['features'])
            stats = FeatureStats(feats.shape[1])
            stats.append(feats.to(torch.float64))
            mu, sigma = stats.mean_cov()
            result['fid'] = calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref)

        if self.train:
            memo = self.settings['memorization']
            feats = features_in(memo['features'])
            matches = [mem.match_reference(feats, reference, ref_feats, memo['threshold'], self.device)
                       for reference, ref_feats in self.references()]
            result['memorization'] = [mem.summarize_match(match) for match in matches]
            mem.save_pairs_figure(os.path.join(outdir, f'pairs-{name}.png'), image_set, matches, text={FIGURE_KEY: key})
        result['seconds'] = round(time.time() - start, 1)
        return result

# The image shape [C, H, W] of every finished round's snapshot (path relative
# to the run), from the samples given for it or else from the network.
def snapshot_shapes(rounds_dir: str, record: dict, samples: dict[str, np.ndarray] | None = None) -> dict[str, list[int]]:
    shapes = {}
    for entry in record.get('rounds', []):
        path = os.path.join(rounds_dir, entry['snapshot']) if entry.get('snapshot') else None
        if path is None or not os.path.isfile(path):
            continue
        given = None if samples is None else samples.get(os.path.abspath(path))
        if given is not None:
            shapes[entry['snapshot']] = list(given.shape[1:])
            continue
        net = load_network(path)
        shapes[entry['snapshot']] = [net.img_channels, net.img_resolution, net.img_resolution]
        del net
    return shapes

#----------------------------------------------------------------------------
# The training loss of every run of the rounds, end to end: each run counts
# its images from 0, so run k is shifted by the length of runs 0..k-1.

def read_loss(stats_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(kimg, mean loss) of every tick of a train.py run; empty when it has no stats.jsonl."""
    kimg, loss = [], []
    if os.path.isfile(stats_path):
        with open(stats_path, 'r', encoding='utf-8') as f:
            for line in f:
                try:
                    tick = json.loads(line)
                    kimg.append(float(tick['Progress/kimg']['mean']))
                    loss.append(float(tick['Loss/loss']['mean']))
                except (ValueError, KeyError, TypeError):
                    continue  # A line being written, or one without the loss.
    return np.array(kimg), np.array(loss)

def loss_curves(rounds_dir: str, entries: Sequence[dict]) -> list[EasyDict]:
    curves, offset = [], 0.0
    for entry in entries:
        if not entry.get('train_dir'):
            continue
        kimg, loss = read_loss(os.path.join(rounds_dir, entry['train_dir'], 'stats.jsonl'))
        if len(kimg):
            curves.append(EasyDict(round=entry['round'], kimg=kimg + offset, loss=loss, start=offset))
            offset += float(kimg.max())
    return curves

#----------------------------------------------------------------------------
# The plots.

def round_label(k: int) -> str:
    return 'pretraining' if k == 0 else f'round {k}'

def plot_fid(path: str, rows: Sequence[dict], title: str) -> None:
    done = [row for row in rows if row.get('fid') is not None]
    fig = new_figure(6.4, 3.6)
    ax = fig.subplots()
    x = [row['round'] for row in done]
    y = [row['fid'] for row in done]
    ax.plot(x, y, marker='o')
    for xi, yi in zip(x, y):
        ax.annotate(f'{yi:.2f}', (xi, yi), textcoords='offset points', xytext=(0, 6), ha='center', fontsize=8)
    ax.set_xticks(x, [round_label(k) for k in x], fontsize=8)
    ax.set_ylim(0, max(y) * 1.15)
    ax.set_ylabel(title)
    ax.set_title(f'{title} of each round\'s final snapshot (lower is better)', fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(fig, path)

def plot_copies(path: str, rows: Sequence[dict], train: Sequence[str]) -> None:
    done = [row for row in rows if row.get('memorization')]
    fig = new_figure(6.4, 3.6)
    ax = fig.subplots()
    x = [row['round'] for row in done]
    for k, name in enumerate(train):
        copies = [row['memorization'][k]['copies'] for row in done]
        fraction = [100 * row['memorization'][k]['fraction'] for row in done]
        line, = ax.plot(x, fraction, marker='o', label=mem.short_path(name))
        for xi, yi, c, row in zip(x, fraction, copies, done):
            if c > 0:  # Counts of copies over samples; the zero line speaks for itself.
                ax.annotate(f'{c}/{row["memorization"][k]["images"]}', (xi, yi), textcoords='offset points',
                            xytext=(0, 6), ha='center', fontsize=8, color=line.get_color())
    ax.set_xticks(x, [round_label(k) for k in x], fontsize=8)
    top = max([100 * m['fraction'] for row in done for m in row['memorization']] + [0])
    ax.set_ylim(0, max(top * 1.2, 1))
    ax.set_ylabel('samples that copy an image of the set (%)')
    ax.set_title('Copies per round (labels: copies / samples)', fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)

def plot_loss(path: str, curves: Sequence[EasyDict]) -> None:
    fig = new_figure(8, 3.6)
    ax = fig.subplots()
    for curve in curves:
        ax.plot(curve.kimg, curve.loss, marker='.' if len(curve.kimg) < 50 else None, label=round_label(curve.round))
        if curve.start > 0:
            ax.axvline(curve.start, color='gray', linestyle=':', linewidth=1)
    ax.set_xlabel('training images of the whole run (kimg)')
    ax.set_ylabel('loss (mean per tick)')
    ax.set_title('Training loss of the pretraining and every round (dotted: a round starts)', fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)

#----------------------------------------------------------------------------
# The page: self-contained but for the PNGs beside it, which it names
# relatively.

def _fmt(value: Any, spec: str = '.2f') -> str:
    return '&ndash;' if value is None else format(value, spec)

# Local paths as the page shows them: relative to the report's folder, so that
# the page names no machine's directories (URLs as they are).
def shown_path(path: str, outdir: str) -> str:
    if '://' in path:
        return path
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(outdir)).replace(os.sep, '/')
    except ValueError:  # Another drive (Windows).
        return path

def shown_settings(settings: dict, outdir: str) -> dict:
    shown = json.loads(json.dumps(settings))
    if shown.get('fid'):
        shown['fid']['ref'] = shown_path(shown['fid']['ref'], outdir)
    for entry in (shown.get('memorization') or {}).get('train', []):
        entry['path'] = shown_path(entry['path'], outdir)
    return shown

def describe_runs(rows: Sequence[dict]) -> str:
    if not rows:
        return 'no step finished yet (the pretraining has not ended)'
    rounds = [row for row in rows if row['round'] > 0]
    unfinished = sum(1 for row in rows if row.get('note') == 'not finished')
    text = f'pretraining and {len(rounds)} round{"" if len(rounds) == 1 else "s"}'
    return text + (f' ({unfinished} not finished)' if unfinished else '')

def render_html(report: dict) -> str:
    e = html.escape
    train = report['train']
    notes = any(row.get('note') for row in report['rows'])
    head = ''.join(f'<th>copies of {e(os.path.basename(os.path.normpath(p)))}</th>' for p in train)
    head += '<th>note</th>' if notes else ''
    body = []
    for row in report['rows']:
        cells = [e(round_label(row['round'])), f'<code>{e(row["snapshot"])}</code>', _fmt(row.get('kimg'), 'g')]
        if report['ref'] is not None:
            cells.append(_fmt(row.get('fid')))
        for k in range(len(train)):
            m = (row.get('memorization') or [None] * len(train))[k]
            cells.append('&ndash;' if m is None else
                         f'{m["copies"]} of {m["images"]} ({m["fraction"]:.2%}); median distance {m["median_distance"]:.4f}')
        if notes:
            cells.append(e(row.get('note', '')))
        body.append('<tr>' + ''.join(f'<td>{c}</td>' for c in cells) + '</tr>')
    fid_head = f'<th>{e(report["fid_title"])}</th>' if report['ref'] is not None else ''
    figures = ''.join(f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'
                      for name, caption in report['figures'])
    grids = ''.join(f'<figure><img class="pixels" src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'
                    for name, caption in report['grids'])
    settings = e(json.dumps(shown_settings(report['settings'], report['outdir']), indent=1))
    run = shown_path(report['rounds'], report['outdir'])
    columns = ''.join(f'<li><b>copies of {e(os.path.basename(os.path.normpath(p)))}</b>: of the samples, those whose nearest '
                      f'image in the --train set <code>{e(shown_path(p, report["outdir"]))}</code>{size} is closer than '
                      f'{report["threshold"]:.3g} times their second-nearest image there, i.e. near-copies of one image of '
                      'that set; the median distance is that of each sample to its nearest image there.</li>'
                      for p, size in zip(train, [f' ({n} images)' for n in report['train_sizes']]))
    columns = f'<ul>{columns}</ul>' if columns else ''
    return f'''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SFBD report: {e(run)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 72em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }} figcaption {{ font-size: 0.9em; color: #444; }}
img {{ max-width: 100%; }} img.pixels {{ image-rendering: pixelated; }}
pre {{ background: #f4f4f4; padding: 0.5em; font-size: 0.8em; }}
</style></head><body>
<h1>SFBD report</h1>
<p>Run <code>{e(run)}</code> (relative to this page), {e(describe_runs(report["rows"]))}; written {e(report["time"])}.
{e(report["about"])}</p>
<table><tr><th>round</th><th>final snapshot</th><th>kimg</th>{fid_head}{head}</tr>
{"".join(body)}
</table>
{columns}
{figures}
<h2>Samples</h2>
{grids}
<h2>Settings</h2>
<pre>{settings}</pre>
</body></html>
'''

#----------------------------------------------------------------------------
# The report.

def write_report(rounds_dir: str, outdir: str | None = None, ref: str | None = None, fid_features: str = 'inception',
                 train: Sequence[str] = (), features: str = 'pixel', threshold: float = mem.DEFAULT_THRESHOLD,
                 num: int = DEFAULT_NUM, max_batch_size: int = 256, device: str | torch.device | None = None,
                 detector: str = DEFAULT_DETECTOR, detector_sha256: str | None = None,
                 samples: dict[str, np.ndarray] | None = None, verbose: bool = True, **sampler_kwargs: Any) -> dict:
    """Score the rounds in `rounds_dir` and write the report; returns its data. `samples` may give
    images already drawn for a snapshot path (seeds 0 to num-1 with the same sampler settings)."""
    record = load_record(rounds_dir)
    if record is None and os.path.isfile(os.path.join(rounds_dir, ONLINE_RECORD_FNAME)):
        raise UserError(f'--rounds={rounds_dir}: an Online SFBD run ({ONLINE_RECORD_FNAME}), which has no rounds to '
                        'report; score its final snapshot with fid.py calc and memorization.py')
    if record is None:
        raise UserError(f'--rounds={rounds_dir}: no {RECORD_FNAME}; give the --outdir of sfbd.rounds')
    outdir = outdir or os.path.join(rounds_dir, 'report')
    for value, option in ((fid_features, '--fid-features'), (features, '--features')):
        if value not in mem.FEATURES:
            raise UserError(f'{option}={value}: expected one of {"|".join(mem.FEATURES)}')
    for path in train:
        if not os.path.exists(path):
            raise UserError(f'--train={path}: no such dataset')
    check_distinct([(p, '--train') for p in train])
    ToolOutputs('sfbd.report', [OutputDir(outdir, '--outdir', markers=(SCORES_FNAME, 'report.html', 'samples-round-*.png'))],
                [(ref, '--ref'), (detector, '--detector'), *[(p, '--train') for p in train]]).check()
    device = torch.device(device) if device is not None else dist.resolve_device(None)

    # Every input is checked before any sampling or output: the --train sets (clean 8-bit images,
    # of the samples' shape for pixel features), the --ref statistics (of the FID's features),
    # against the image shape of every finished snapshot.
    references = mem.open_references(train)
    ref_stats = None if ref is None else load_ref_stats(ref)
    shapes = snapshot_shapes(rounds_dir, record, samples)
    if features == 'pixel':
        for snapshot, shape in shapes.items():
            mem.check_shapes(references, shape, mem.PixelFeatures(), samples=f'the samples of {snapshot}')
    # The detector, when used, enters the settings by content.
    inception = None
    if (ref is not None and fid_features == 'inception') or (train and features == 'inception'):
        inception = mem.load_feature_space('inception', device, detector, detector_sha256, verbose)
    settings = score_settings(num, sampler_kwargs, ref, ref_stats, fid_features, train, features, threshold,
                              None if inception is None else inception.sha256)
    scorer = Scorer(settings, ref_stats, references, device, detector, detector_sha256, max_batch_size, verbose)
    if inception is not None:
        scorer.spaces['inception'] = inception
    for shape in shapes.values():
        scorer.check_fid_features(shape)
    os.makedirs(outdir, exist_ok=True)
    scores_path = os.path.join(outdir, SCORES_FNAME)
    scores = load_scores(scores_path)

    rows = []
    for entry in record.get('rounds', []):
        name = f'round-{entry["round"]:03d}'
        row = dict(round=entry['round'], snapshot=entry.get('snapshot') or '')
        snapshot = os.path.join(rounds_dir, entry['snapshot']) if entry.get('snapshot') else None
        if snapshot is None or not os.path.isfile(snapshot):
            rows.append(dict(row, note='not finished'))
            continue
        row['kimg'] = snapshot_kimg(snapshot)
        key = score_key(file_sha256(snapshot), settings)
        if key in scores and figure_key(os.path.join(outdir, f'samples-{name}.png')) == key and \
                (not train or figure_key(os.path.join(outdir, f'pairs-{name}.png')) == key):
            if verbose:
                print(f'{round_label(entry["round"])}: scores of {entry["snapshot"]} reused')
        else:
            if verbose:
                print(f'{round_label(entry["round"])}: scoring {entry["snapshot"]}...', flush=True)
            given = None if samples is None else samples.get(os.path.abspath(snapshot))
            scores[key] = scorer.score(snapshot, name, outdir, given, key)
            save_scores(scores_path, scores)
        rows.append(dict(row, **scores[key]))

    # Plots and page.
    fid_title = 'FID' if fid_features == 'inception' else 'Frechet distance (pixels)'
    figures, grids = [], []
    if ref is not None and any(row.get('fid') is not None for row in rows):
        plot_fid(os.path.join(outdir, 'fid.png'), rows, fid_title)
        figures.append(('fid.png', f'{fid_title} against {shown_path(ref, outdir)}, per round'))
    if train and any(row.get('memorization') for row in rows):
        plot_copies(os.path.join(outdir, 'copies.png'), rows, train)
        figures.append(('copies.png', 'Samples that copy a training image, per round and set'))
    curves = loss_curves(rounds_dir, record.get('rounds', []))
    if curves:
        plot_loss(os.path.join(outdir, 'loss.png'), curves)
        figures.append(('loss.png', 'Training loss over the whole run'))
    for row in rows:
        if 'num' in row:
            name = f'round-{row["round"]:03d}'
            grids.append((f'samples-{name}.png', f'{round_label(row["round"])}: samples (seeds 0-{min(row["num"], GRID_SAMPLES) - 1})'))
            if train:
                grids.append((f'pairs-{name}.png', f'{round_label(row["round"])}: the samples most like copies'))
    about = 'No scores were asked for (give --ref and/or --train); the samples only.'
    if ref is not None or train:
        about = f'Scores of {num} samples per snapshot, seeds 0 to {num - 1}.'
    if train:
        about += (f' A sample copies a set when its nearest image there is closer than {threshold:.3g} times its '
                  f'second-nearest ({features} features; Gu et al., On Memorization in Diffusion Models).')
    report = dict(rounds=os.path.abspath(rounds_dir), outdir=os.path.abspath(outdir), rows=rows, ref=ref, train=list(train),
                  train_sizes=[len(r) for r in references], threshold=threshold, settings=settings, fid_title=fid_title,
                  figures=figures, grids=grids, about=about, time=time.strftime('%Y-%m-%d %H:%M:%S'))
    with atomic_write(os.path.join(outdir, 'report.html'), 'w') as f:
        f.write(render_html(report))
    if verbose:
        print_table(report)
        print(f'Report: {os.path.join(outdir, "report.html")}')
    return report

def print_table(report: dict) -> None:
    print(f'{"round":<12} {"kimg":>8} {report["fid_title"] if report["ref"] else "":>26} '
          + ' '.join(f'{"copies of " + os.path.basename(os.path.normpath(p)):>24}' for p in report['train']))
    for row in report['rows']:
        fid = '' if not report['ref'] else _fmt(row.get('fid')).replace('&ndash;', '-')
        copies = [f'{m["copies"]}/{m["images"]}' for m in (row.get('memorization') or [])]
        kimg = '-' if row.get('kimg') is None else row['kimg']
        print(f'{round_label(row["round"]):<12} {kimg:>8} {fid:>26} ' + ' '.join(f'{c:>24}' for c in copies)
              + (f' {row["note"]}' if row.get('note') else ''))

#----------------------------------------------------------------------------
