"""bench.py and tools/bench.py: every stage on both paths with a micro configuration, the
record fields, the table and the JSON lines, on the CPU."""

import functools
import json
import warnings

import pytest
import torch
from click.testing import CliRunner

import bench as bench_cli
from tools import bench
from torch_utils import fast as fast_lib

FIELDS = ('what', 'path', 'config', 'device', 'device_name', 'dtype', 'batch', 'img_per_s', 'flop_per_img', 'tflops',
          'mfu', 'peak_mem_gb')

@pytest.fixture
def micro(monkeypatch):
    # An 8x8 DDPM++ with one block per resolution: seconds for all four stages.
    network = dict(bench.CONFIGS['tiny']['network'], model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    config = dict(resolution=8, network=network, lr=1e-3, batch=dict(cpu=dict(train=4, denoise=2, generate=2, fid=8),
                                                                       cuda=dict(train=4, denoise=2, generate=2, fid=8)))
    monkeypatch.setitem(bench.CONFIGS, 'micro', config)
    monkeypatch.setattr(torch, 'get_num_threads', torch.get_num_threads)
    torch.set_num_threads(1)
    return 'micro'

def test_every_stage_on_both_paths(micro, tmp_path):
    # fid's detector as a file, as fid.py loads it: the stand-in with 16 features (cheap statistics).
    detector = str(tmp_path / 'detector.pt')
    with warnings.catch_warnings():  # TorchScript is deprecated, but the published detector is in that format.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.jit.save(torch.jit.script(bench.StandInDetector(dim=16, width=8)), detector)
    lines = []
    records = bench.run_benchmark(device='cpu', config=micro, seconds=0.01, compare=True, detector=detector, peak=1.5,
                                  workdir=str(tmp_path), log=lines.append)
    assert [(r['what'], r['path']) for r in records] == [(w, p) for w in bench.STAGES for p in bench.PATHS]
    for record in records:
        assert all(key in record for key in FIELDS), record
        assert record['config'] == 'micro' and record['device'] == 'cpu' and record['dtype'] == 'float32'
        assert record['img_per_s'] > 0 and record['flop_per_img'] > 0 and record['peak_mem_gb'] > 0
        assert record['tflops'] == pytest.approx(record['img_per_s'] * record['flop_per_img'] / 1e12, rel=1e-2, abs=1e-4)
        assert record['mfu'] == pytest.approx(record['tflops'] / 1.5, abs=1e-4)
        assert record['images'] >= record['batch'] and record['warmup_s'] > 0
        assert ('speedup' in record) == (record['path'] == 'fast')
    by_key = {(r['what'], r['path']): r for r in records}
    assert by_key['train', 'fast']['batch'] == 4 and by_key['generate', 'fast']['batch'] == 2
    # A training step's FLOPs (forward and backward) exceed one forward; a sampler run is 35 or 15 evaluations.
    assert by_key['generate', 'fast']['flop_per_img'] / by_key['denoise', 'fast']['flop_per_img'] == pytest.approx(35 / 15, rel=0.01)
    for what in ('denoise', 'generate'):  # The CPU's fast path computes the same images.
        assert by_key[what, 'fast']['diff_u8_max'] == 0 and by_key[what, 'fast']['diff_images'] > 0
    assert by_key['fid', 'faithful']['detector'] == detector and by_key['fid', 'fast']['frechet_s'] >= 0
    assert lines[0] == 'train: setting up faithful and fast...'
    assert by_key['train', 'fast']['settings']['optimizer'] == 'foreach'

    table = bench.format_table(records).splitlines()
    assert table[0].split()[:3] == ['what', 'path', 'config'] and len(table) == 1 + len(records)
    bench.append_records(str(tmp_path / 'out.jsonl'), records, command='python bench.py ...')
    written = [json.loads(line) for line in (tmp_path / 'out.jsonl').read_text().splitlines()]
    assert len(written) == len(records) and written[0]['command'] == 'python bench.py ...'

def test_one_path_unknown_peak_and_the_standin(micro, tmp_path, monkeypatch):
    records = bench.run_benchmark(what=['generate'], device='cpu', config=micro, seconds=0.01, path='faithful',
                                  workdir=str(tmp_path), log=lambda _line: None)
    (record,) = records
    assert record['path'] == 'faithful' and record['mfu'] is None and 'speedup' not in record
    detector, name = bench.open_detector(bench.STANDIN_DETECTOR, torch.device('cpu'), None)
    assert name == bench.STANDIN_NAME and detector.features(torch.zeros([2, 3, 8, 8], dtype=torch.uint8)).shape == (2, 2048)

    # FID timed with the stand-in (16 features here: cheap statistics): the console table marks the
    # row and says so below it.
    monkeypatch.setattr(bench, 'StandInDetector', functools.partial(bench.StandInDetector, dim=16, width=8))
    (record,) = bench.run_benchmark(what=['fid'], device='cpu', config=micro, seconds=0.01, path='faithful',
                                    detector=bench.STANDIN_DETECTOR, workdir=str(tmp_path), log=lambda _line: None)
    table = bench.format_table([record]).splitlines()
    assert record['detector'] == bench.STANDIN_NAME and table[1].split()[:2] == ['fid*', 'faithful']
    assert table[-1] == f'* fid: the detector was the {bench.STANDIN_NAME}; Inception\'s timings differ'
    assert bench.format_table(records).splitlines()[-1].split()[0] == 'generate'  # Other stages: no note.

def test_frechet_formulas():
    faithful, fast = bench.frechet_records(dim=64, samples=256)
    assert faithful['formula'].startswith('scipy') and fast['formula'] == 'eigh'
    assert fast['rel_diff'] < 1e-6 and fast['speedup'] > 0

def test_peaks_and_cli_errors(tmp_path):
    assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16', False) == 989
    assert bench.peak_tflops('NVIDIA H100 PCIe', 'float32', True) == 378
    assert bench.peak_tflops('AMD EPYC, 2 cores', 'float32', False) is None
    result = CliRunner().invoke(bench_cli.main, ['--what=train,sample'])
    assert result.exit_code == 2 and 'choose from' in result.output
    # Bad inputs are one line each, before any measuring.
    for args, message in ([f'--json={tmp_path}'], 'is a directory'), (['--device=bogus'], '--device=bogus: not a device'), \
                         (['--seconds=nan'], 'not a finite number'), (['--what=fid', '--detector=/no/such.pt'], 'no such file'):
        result = CliRunner().invoke(bench_cli.main, args)
        assert result.exit_code in (1, 2) and message in result.output and 'Benchmarking' not in result.output, result.output
    result = CliRunner().invoke(bench_cli.main, ['--help'])
    assert result.exit_code == 0 and '--compare' in result.output and '--peak-tflops' in result.output

#----------------------------------------------------------------------------
# A measurement that does not end stops with one line naming the stage, the
# path and the phase, and leaves every thread's stack in a file.

def test_a_stalled_measurement_is_one_line_with_a_stack_file(tmp_path):
    import time
    stuck = bench.Runner('train', 'fast', 1, 'float32', run=lambda: time.sleep(30) or 1,
                         numerics=bench.numerics_for('train', None))
    start = time.perf_counter()
    with pytest.raises(bench.UserError) as info:
        bench.measure([stuck], torch.device('cpu'), seconds=0.1, warmup=1, timeout=0.5, stall_dir=str(tmp_path))
    assert time.perf_counter() - start < 20
    message = str(info.value)
    assert 'bench: train on the fast path did not finish its warm-up within' in message and '\n' not in message
    dump = tmp_path / 'bench-stalled-train-fast.txt'
    assert str(dump) in message and 'test_bench.py' in dump.read_text()

def test_records_are_written_stage_by_stage(tmp_path, monkeypatch):
    # A stage that stalls after another has been measured: the finished stage's records are in the
    # file already, and the command ends with the stall's one line.
    real_measure, calls = bench.measure, []
    def measure(runners, *args, **kwargs):
        calls.append(runners[0].what)
        if len(calls) == 2:
            raise bench.UserError(f'bench: {runners[0].what} on the fast path did not finish its warm-up within 1 s')
        return real_measure(runners, *args, **kwargs)
    monkeypatch.setattr(bench, 'measure', measure)
    out = tmp_path / 'out.jsonl'
    result = CliRunner().invoke(bench_cli.main, ['--device=cpu', '--config=tiny', '--what=train,generate',
                                                 '--compare', '--seconds=0.01', f'--json={out}'])
    assert result.exit_code == 1 and 'Error: bench: generate on the fast path did not finish' in result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r['what'], r['path']) for r in written] == [('train', 'faithful'), ('train', 'fast')]
    assert written[1]['speedup'] > 0 and written[0]['command'].startswith('python bench.py')

def test_settings_overrides_augmentation_profile_and_compile_counts(micro, tmp_path):
    assert bench.parse_overrides(['pool_resample=false', 'compile_mode=none', 'stop_poll_steps=4', 'dtype=bfloat16']) == \
        dict(pool_resample=False, compile_mode=None, stop_poll_steps=4, dtype='bfloat16')
    assert bench.parse_overrides(['cudnn_benchmark_limit=0']) == dict(cudnn_benchmark_limit=0)
    assert bench.parse_overrides(['cudnn_benchmark_limit=none']) == dict(cudnn_benchmark_limit=None)
    fast = bench.numerics_for('train', fast_lib.fast_settings('cpu', cudnn_benchmark_limit=0))
    assert fast['cudnn_benchmark'] and fast['cudnn_benchmark_limit'] == 0
    assert bench.numerics_for('train', None)['cudnn_benchmark_limit'] == fast_lib.PYTORCH_CUDNN_BENCHMARK_LIMIT
    for bad in ('pool_resample', 'no_such=1', 'compile=maybe', 'stop_poll_steps=x'):
        with pytest.raises(bench.UserError, match=f'--set={bad}'):
            bench.parse_overrides([bad])
    records = bench.run_benchmark(what=['train'], device='cpu', config=micro, seconds=0.01, compare=True,
                                  augment=0.5, profile=True, workdir=str(tmp_path), log=lambda line: None,
                                  fast_overrides=dict(pool_resample=False))
    for record in records:
        assert record['augment'] == 0.5 and record['compiled_graphs'] == 0 and record['graph_breaks'] == 0
        profile = record['profile']
        assert profile['busy_ms_per_step'] > 0 and abs(sum(k['share'] for k in profile['kinds'].values()) - 1) < 1e-3
        assert any(kind.startswith('conv') for kind in profile['kinds'])
    assert records[1]['settings']['pool_resample'] is False
    table = bench.format_table(records)
    assert 'train fast profile:' in table and 'conv forward' in table
    result = CliRunner().invoke(bench_cli.main, ['--device=cpu', '--set=nothing=1'])
    assert result.exit_code == 1 and 'Error: --set=nothing=1' in result.output
    for bad, said in [('cudnn_benchmark_limit=-1', '0 (every algorithm) or more'), ('optimizer=sgd', 'fused or foreach')]:
        result = CliRunner().invoke(bench_cli.main, ['--device=cpu', f'--set={bad}'])
        assert result.exit_code == 1 and f'Error: --set: {bad}: {said}' in result.output

def test_markdown_tables_of_records(tmp_path):
    # docs/performance.md's tables: one per bench.py run (its device, date and command), the compile
    # counts in the notes where something was compiled, the Frechet rows as a list.
    common = dict(config='cifar10', device='cuda', device_name='NVIDIA H200', date='2026-12-05T10:00:00+00:00',
                  torch='2.11.0', threads=16, omp_num_threads=None, load=[0.5, 0.4, 0.3], flop_per_img=127e9,
                  peak_mem_gb=18.0, warmup_s=2.0, command='python bench.py --what=train --compare')
    records = [dict(common, what='train', path='faithful', dtype='float16', batch=256, img_per_s=1612.0, tflops=204.7,
                    mfu=0.207),
               dict(common, what='train', path='fast', dtype='bfloat16', batch=256, img_per_s=3300.0, tflops=419.1,
                    mfu=0.424, speedup=2.047, warmup_s=95.0, compiled_graphs=1, recompiled_graphs=0, graph_breaks=0),
               dict(common, what='frechet', formula='eigh', dim=2048, seconds=1.5, speedup=3.9, rel_diff=2e-16,
                    command='python bench.py --what=frechet')]
    path = tmp_path / 'records.jsonl'
    bench.append_records(str(path), records)
    result = CliRunner().invoke(bench_cli.main, [f'--markdown={path}'])
    assert result.exit_code == 0, result.output
    text = result.output
    assert '**NVIDIA H200** (cuda, 16 threads, OMP_NUM_THREADS=None), 2026-12-05T10:00:00+00:00, torch 2.11.0' in text
    assert '`python bench.py --what=train --compare`' in text and '`python bench.py --what=frechet`' in text
    rows = [line for line in text.splitlines() if line.startswith('| train')]
    assert rows[0].startswith('| train | faithful | cifar10 | float16 | 256 | 1.61e+03 | 127 |') and '20.7%' in rows[0]
    assert '| 2.05x |' in rows[1] and 'warm-up 95.0 s; compiled graphs 1, recompiled after the warm-up 0' in rows[1]
    assert 'compiled graphs' not in rows[0]
    assert '- Frechet distance, 2048 features, eigh: 1.50 s (3.9x faster, relative difference 2.0e-16)' in text

# --markdown reads bench.py's records only: anything else is one line, not a traceback.
@pytest.mark.parametrize('content, message', [(b'\xff\n', 'not JSON lines'), (b'[1]\n', 'not a JSON object'),
                                              (b'{"what": "train"}\n', 'has no "device"'), (b'', 'holds no records')])
def test_markdown_of_a_file_that_is_not_records(tmp_path, content, message):
    path = tmp_path / 'records.jsonl'
    path.write_bytes(content)
    result = CliRunner().invoke(bench_cli.main, [f'--markdown={path}'])
    assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
    assert result.output.count('Error:') == 1 and message in result.output, result.output

# --json appends to a log of records only, never to a file that is not one (an input included);
# --set names a compile backend or mode that torch.compile has.
def test_json_and_compile_settings_are_checked(tmp_path):
    detector = tmp_path / 'detector.pt'
    detector.write_bytes(b'not a log')
    cases = [(['--what=fid', f'--detector={detector}', f'--json={detector}'], 'is the input --detector'),
             ([f'--json={detector}'], 'is not an output of bench.py'),
             (['--set=compile=true', '--set=compile_backend=bogus'], 'compile_backend=bogus: a torch.compile backend'),
             (['--set=compile=true', '--set=compile_backend=aot_eager', '--set=compile_mode=max-autotune'], 'a mode of inductor'),
             (['--set=compile_mode=fastest'], 'compile_mode=fastest: one of')]
    for args, message in cases:
        result = CliRunner().invoke(bench_cli.main, ['--device=cpu', *args])
        assert result.exit_code == 1 and message in result.output and 'Traceback' not in result.output, result.output
    assert detector.read_bytes() == b'not a log'

