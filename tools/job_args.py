"""The options that the cluster scripts pass on to train.py and denoise.py, and the places they write
and read, checked before any job is submitted (scripts/sfbd_rounds.sh, scripts/denoise_submit.sh,
scripts/denoise.sh):

    python -m tools.job_args train|denoise VARIABLE [ARG ...] [-- train|denoise VARIABLE [ARG ...]] ...
    python -m tools.job_args output VARIABLE PATH [INPUT_VARIABLE INPUT_PATH ...]
    python -m tools.job_args data CLEAN_VARIABLE CLEAN_PATH NOISY_VARIABLE NOISY_PATH

exits with status 1 and one line naming the first VARIABLE whose ARG ... the tool would refuse, or which
set what the script sets itself (the paths, the shard); whose PATH breaks the output rules of
dnnlib/outputs.py (an input, a set of images, a broken link on the way); or whose data sfbd.rounds
would refuse (not clean images and observations of one size). Else it prints nothing. Several groups
are checked in one process, so that the scripts pay for importing the option tables once."""

from __future__ import annotations

import sys
from typing import Sequence

from dnnlib.util import UserError

# What scripts/train.sh and scripts/denoise.sh set from their variables.
TRAIN_SET_BY_SCRIPTS = ('outdir', 'data', 'noisy', 'transfer', 'nosubdir')

def check_job_args(kind: str, variable: str, args: Sequence[str]) -> None:
    """Raise a UserError naming `variable` if train.py (`kind` 'train') or denoise.py ('denoise') would
    not take `args` from a script."""
    if kind == 'train':
        from tools.train_options import parse_train_args
        parse_train_args(args, variable, TRAIN_SET_BY_SCRIPTS, setter='the script')
    elif kind == 'denoise':
        from tools.denoise_setup import parse_denoise_args
        parse_denoise_args(args, variable, setter='the script')
    elif kind == 'output' and len(args) % 2 == 1:
        from dnnlib.outputs import check_apart
        check_apart([(args[0], variable)], [(path, name) for name, path in zip(args[1::2], args[2::2])])
    elif kind == 'data' and len(args) == 3:
        from tools.rounds import check_datasets
        check_datasets(args[0], args[2], clean_option=variable, noisy_option=args[1])
    else:
        raise UserError(f'{kind} {variable} {" ".join(args)}: expected train, denoise, output or data with its arguments')

def main(argv: Sequence[str]) -> int:
    groups: list[list[str]] = [[]]
    for arg in argv:
        if arg == '--':
            groups.append([])
        else:
            groups[-1].append(arg)
    groups = [group for group in groups if group]
    if not groups or any(len(group) < 2 for group in groups):
        print('usage: python -m tools.job_args train|denoise|output|data VARIABLE [ARG ...] [-- ...]', file=sys.stderr)
        return 2
    try:
        for kind, variable, *args in groups:
            check_job_args(kind, variable, args)
    except UserError as e:
        print(e, file=sys.stderr)
        return 1
    return 0

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
