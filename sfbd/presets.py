"""Settings of published runs, by name: the train.py and denoise.py options of each, and their source.

    python -m sfbd.presets                      # the table, with sources
    python -m sfbd.presets celeba64 --for=train # the options, one per line (for scripts)

An Online SFBD run (`sfbd.rounds --online`, `ONLINE=1` of the cluster script) takes the training
options and, since its refreshes denoise as denoise.py does, the denoise.py options it shares
with denoise.py (--mode, --steps): `--for=online`.

`python -m sfbd.rounds --preset=NAME` and the cluster scripts (`PRESET=NAME`) read this table, so
a preset means the same everywhere. The options go before the user's own, which win where both
are given (train.py and denoise.py take the last value of an option).
"""

from __future__ import annotations

import click

#----------------------------------------------------------------------------
# Each preset: options for every training run (pretraining and update
# rounds), options for the backward step, and where the values come from.

PRESETS: dict[str, dict] = {
    'cifar10': dict(
        train=['--cond=0', '--arch=ddpmpp', '--batch=512', '--cres=2,2,2', '--lr=1e-3', '--dropout=0.13', '--augment=0.12'],
        denoise=['--steps=18'],
        source='EDM\'s CIFAR-10 32x32 DDPM++ recipe (NVlabs/edm README and train.py defaults), without labels as '
               'in the SFBD release\'s script (--cond=0); 18 steps: EDM\'s CIFAR-10 sampler grid. The SFBD '
               'release has no CIFAR-10 script.',
    ),
    'celeba64': dict(
        train=['--cond=0', '--arch=ncsnpp', '--batch=256', '--cres=1,2,2,2', '--lr=2e-4', '--dropout=0.05', '--augment=0.15'],
        denoise=['--steps=40'],
        source='The SFBD release\'s CelebA 64x64 scripts (watml/SFBD scripts/train.sh, EDM\'s FFHQ-64 '
               'hyperparameters with NCSN++; scripts/denoise.sh, --steps=40).',
    ),
}
KINDS = ('train', 'denoise', 'online')

# Online SFBD's refreshes denoise as denoise.py does: the denoise.py options
# of a preset that train.py's online run also has (same name, same meaning)
# go to the online run too, after the training options.
ONLINE_DENOISE_OPTIONS = ('--mode', '--steps')

def preset_args(name: str | None, kind: str) -> list[str]:
    """The options of preset `name` for `kind`: 'train' (every training run), 'denoise'
    (denoise.py) or 'online' (the extra train.py options of an Online SFBD run: the backward
    sampler's, taken from 'denoise'); none for None or 'none'."""
    if name in (None, 'none', ''):
        return []
    if name not in PRESETS:
        raise KeyError(f'unknown preset "{name}"; known: {", ".join(PRESETS)}, none')
    if kind == 'online':
        return [option for option in PRESETS[name]['denoise'] if option.split('=')[0] in ONLINE_DENOISE_OPTIONS]
    return list(PRESETS[name][kind])

#----------------------------------------------------------------------------

@click.command()
@click.argument('name', required=False)
@click.option('--for', 'kind', help='Print the options for this step, one per line', type=click.Choice(KINDS))
def main(name: str | None, kind: str | None) -> None:
    """List the presets, or print the options of preset NAME."""
    if name is None:
        for preset, entry in PRESETS.items():
            print(f'{preset}:\n  train.py   {" ".join(entry["train"])}\n  denoise.py {" ".join(entry["denoise"])}\n'
                  f'  online     {" ".join(preset_args(preset, "online"))} (train.py, Online SFBD\'s refreshes)\n'
                  f'  source: {entry["source"]}')
        return
    try:
        options = {k: preset_args(name, k) for k in KINDS}
    except KeyError as e:
        raise click.ClickException(e.args[0]) from None
    for k in ([kind] if kind else KINDS):
        for option in options[k]:
            print(option if kind else f'{k}: {option}')

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
