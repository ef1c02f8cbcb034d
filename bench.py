"""Measure the speed of every stage of an SFBD run, on the faithful and the fast path.

A thin command line over tools/bench.py, which describes the stages, the measurement and the
record fields. docs/performance.md's tables are made from the JSON lines it writes (`--markdown`).
"""

from __future__ import annotations

import os
import shlex
import sys

import click
import torch

from dnnlib.cli import FiniteFloat
from dnnlib.util import report_user_errors
from torch_utils.detector import DEFAULT_DETECTOR
from tools import bench

#----------------------------------------------------------------------------

def _stage_list(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    stages = [part.strip() for part in value.split(',') if part.strip()]
    unknown = [s for s in stages if s not in bench.STAGES + bench.EXTRA_STAGES]
    if not stages or unknown:
        raise click.BadParameter(f'choose from {",".join(bench.STAGES + bench.EXTRA_STAGES)}, not "{value}"')
    return stages

@click.command()
@click.option('--what',         help=f'Stages, comma-separated: {",".join(bench.STAGES)}, and frechet (the distance alone)', metavar='LIST', type=str, callback=_stage_list, default=','.join(bench.STAGES), show_default=True)
@click.option('--device',       help='Device  [default: cuda if available, else cpu]', metavar='STR',           type=str)
@click.option('--config',       help='tiny: small DDPM++ for CPUs; cifar10: DDPM++ 32x32; ffhq64: DDPM++ 64x64 (EDM recipes)', type=click.Choice(list(bench.CONFIGS)), default='tiny', show_default=True)
@click.option('--batch',        help='Batch size of every stage  [default: per configuration and device; with the fast path on a GPU, what fits for sampling]', metavar='INT', type=click.IntRange(min=1))
@click.option('--seconds',      help='Time per measurement (stage and path) after the warm-up', metavar='SEC', type=FiniteFloat(min=0, min_open=True), default=10, show_default=True)
@click.option('--compare',      help='Measure the faithful and the fast path, interleaved; the fast record gets speedup', is_flag=True)
@click.option('--path',         help='The path measured without --compare', type=click.Choice(bench.PATHS), default='fast', show_default=True)
@click.option('--detector',     help=f'FID detector as in fid.py, or "{bench.STANDIN_DETECTOR}"  [default: Inception; the stand-in when it cannot be downloaded]', metavar='PT|PKL|URL', type=str, default=DEFAULT_DETECTOR)
@click.option('--peak-tflops',  help='Peak TFLOP/s of the device for MFU  [default: known GPUs, else MFU is null]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True))
@click.option('--augment',      help='Augmentation probability of the train stage, as train.py\'s --augment; 0 = none', metavar='FLOAT', type=FiniteFloat(min=0, max=1), default=0.12, show_default=True)
@click.option('--set', 'overrides', help='Change one fast-path setting for an experiment, e.g. --set=pool_resample=false (torch_utils/fast.py FastSettings; repeatable)', metavar='KEY=VALUE', type=str, multiple=True)
@click.option('--profile',      help='Add a torch.profiler breakdown of each path\'s training step (device time per kind of work) to its record', is_flag=True)
@click.option('--timeout',      help='Longest warm-up of one stage and path (compiling included); past it, or past twice the timed blocks\' plan, bench stops with one line and writes every thread\'s stack to a file', metavar='SEC', type=FiniteFloat(min=0, min_open=True), default=900, show_default=True)
@click.option('--json', 'json_path', help='Append one JSON record per stage and path to this file, each stage as soon as it is measured', metavar='FILE', type=str)
@click.option('--markdown',     help='Measure nothing: print the records of this JSON-lines file as docs/performance.md\'s tables', metavar='FILE', type=click.Path(exists=True, dir_okay=False))
@report_user_errors
def main(what: list[str], device: str | None, config: str, batch: int | None, seconds: float, compare: bool,
         path: str, detector: str, peak_tflops: float | None, augment: float, overrides: tuple[str, ...],
         profile: bool, timeout: float, json_path: str | None, markdown: str | None) -> None:
    """Benchmark training, denoising, generation and FID on this machine.

    \b
    Examples:
    # Every stage of the tiny configuration on the CPU, both paths (about a minute on 2 idle cores)
    OMP_NUM_THREADS=1 python bench.py --device=cpu --config=tiny --seconds=3 --compare --json=out.jsonl
    \b
    # DDPM++ CIFAR-10 training on a GPU, fast path against EDM's --fp16
    python bench.py --what=train --config=cifar10 --compare
    \b
    # The Frechet distance: EDM's sqrtm against the eigenvalue formula at 2048 features
    python bench.py --what=frechet
    \b
    # The tables of docs/performance.md from the records
    python bench.py --markdown=out.jsonl
    \b
    Records have what, path, config, device, device_name, dtype, batch, img_per_s,
    flop_per_img, tflops, mfu, peak_mem_gb (and more); see tools/bench.py.
    """
    if markdown is not None:
        print(bench.markdown_tables(bench.read_records(markdown, '--markdown')))
        return
    device_obj, fast_overrides = bench.check_inputs(what, device, detector, overrides, json_path)
    command = 'python bench.py ' + shlex.join(sys.argv[1:])
    threads = os.environ.get('OMP_NUM_THREADS')
    print(f'Benchmarking {",".join(what)} ({config}) on {bench.device_name(device_obj)}, '
          f'{torch.get_num_threads()} threads (OMP_NUM_THREADS={threads})...', flush=True)
    def write(stage_records: list[dict]) -> None:  # Each stage as it ends: a later stall loses nothing.
        if json_path is not None:
            bench.append_records(json_path, stage_records, command=command)
            print(f'Appended {len(stage_records)} records to "{json_path}".', flush=True)
    records = bench.run_benchmark(what=what, device=device_obj, config=config, batch=batch, seconds=seconds,
                                  compare=compare, path=path, detector=detector, peak=peak_tflops,
                                  fast_overrides=fast_overrides, augment=augment, profile=profile, timeout=timeout,
                                  stall_dir=os.path.dirname(os.path.abspath(json_path)) if json_path else '.',
                                  log=lambda line: print(line, flush=True), on_records=write)
    print()
    print(bench.format_table(records))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
