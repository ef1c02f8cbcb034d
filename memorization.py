"""Does a model copy its training images? The memorisation check of SFBD's premise.

Finds, for every generated image, its nearest and second-nearest image in each reference set,
exactly, in pixel space or in the Inception features FID uses, and counts the image as a copy
when the nearest distance is below --threshold (1/3) times the second-nearest: the
relative-distance criterion of Gu et al., "On Memorization in Diffusion Models" (TMLR 2025).
The library is sfbd/memorization.py; docs/sfbd.md explains how to read the results.

The command line only: its option table, one call of sfbd.memorization.memorization_command (the
output rules and the work) and the table of results.
"""

from __future__ import annotations

from typing import Any

import click

from dnnlib.cli import IntList
from dnnlib.util import report_user_errors
from sfbd import memorization as mem
from tools.options import refuse_sampler_options_with_images, sampler_options

#----------------------------------------------------------------------------

@click.command()
@click.option('--images', 'image_path',    help='Generated images to check: directory or zip', metavar='DIR|ZIP', type=str)
@click.option('--network', 'network_pkl',  help='Or generate them from this network pickle', metavar='PKL|URL', type=str)
@click.option('--seeds',                   help='Seeds of the generated images (with --network)  [default: 0-9999]', metavar='LIST', type=IntList(distinct=True))
@click.option('--train', 'train_paths',    help='Reference set: a dataset of 8-bit images (repeat for several)', metavar='ZIP|DIR', type=str, multiple=True, required=True)
@click.option('--features',                help='Feature space of the distances', type=click.Choice(mem.FEATURES), default='pixel', show_default=True)
@click.option('--threshold',               help='A copy: nearest < threshold x second-nearest distance; a fraction in (0, 1], e.g. 0.3 or 1/3  [default: 1/3]', metavar='FLOAT', type=mem.ThresholdType(), default='1/3')
@click.option('--outdir',                  help='Write pairs.png (closest pairs) and distances.png (histograms) here', metavar='DIR', type=str)
@click.option('--json', 'json_path',       help='Write every image\'s nearest reference, distances and verdict here', metavar='FILE', type=str)
@click.option('--batch', 'max_batch_size', help='Maximum batch size for generating and for features', metavar='INT', type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--device',                  help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str, default=None)
@click.option('--detector',                help='Feature detector for --features=inception  [default: NVIDIA\'s Inception-v3, TorchScript]', metavar='PT|PKL|URL', type=str)
@click.option('--detector-sha256',         help='Expected sha256 of the detector file', metavar='HEX', type=str)
@sampler_options
@report_user_errors
def main(image_path: str | None, network_pkl: str | None, seeds: list[int] | None, train_paths: tuple[str, ...],
         features: str, threshold: float, outdir: str | None, json_path: str | None, max_batch_size: int,
         device: str | None, detector: str | None, detector_sha256: str | None, **sampler_kwargs: Any) -> None:
    """Check generated images for copies of reference images.

    An image counts as a copy of a reference set when its distance to the
    nearest image of the set is below --threshold times the distance to the
    second-nearest (Gu et al., "On Memorization in Diffusion Models", TMLR 2025,
    with 1/3 on pixels). The search is exact. Distances are RMS differences per
    feature (for pixels in [-1, 1] units). The table gives, per reference set,
    the images checked, the copies, their fraction and the median nearest
    distance; --json gives every image's nearest reference (file names relative
    to their sets), both distances, the ratio and the verdict.

    \b
    Examples:
    # 10,000 samples of a snapshot against the clean set and the split's source
    python memorization.py --network=runs/sfbd/round-004/train/network-snapshot-020000.pkl \\
        --seeds=0-9999 --train=datasets/clean.zip --train=datasets/cifar10-32x32.zip \\
        --outdir=memorization --json=memorization/images.json
    \b
    # Images already generated, in Inception features
    python memorization.py --images=out --train=datasets/clean.zip --features=inception
    """
    refuse_sampler_options_with_images(image_path, sampler_kwargs)
    matches, wrote = mem.memorization_command(
        image_path=image_path, network_pkl=network_pkl, seeds=seeds, train_paths=train_paths, features=features,
        threshold=threshold, outdir=outdir, json_path=json_path, max_batch_size=max_batch_size, device=device,
        detector=detector, detector_sha256=detector_sha256, sampler_kwargs=sampler_kwargs)
    print(mem.format_table(matches))
    if wrote:
        print('Wrote ' + ', '.join(wrote))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
