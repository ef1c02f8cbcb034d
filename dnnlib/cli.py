"""Option types shared by the command-line tools. Every bad value fails while click parses it, as a
usage error that names the option (exit status 2), never as a traceback."""

from __future__ import annotations

import math
import shlex
from typing import Any, Sequence

import click

from dnnlib.util import UserError, parse_int_list

#----------------------------------------------------------------------------
# Comma-separated integers and ranges ('0-63', '1,2,5-10'): EDM's --seeds.

class IntList(click.ParamType):
    name = 'LIST'

    def __init__(self, distinct: bool = False):
        self.distinct = distinct  # Refuse a value given twice (seeds).

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        try:
            return parse_int_list(value, distinct=self.distinct)
        except UserError as e:
            self.fail(str(e), param, ctx)

#----------------------------------------------------------------------------
# The options among `names` (parameter names) that the command line or the
# environment set, as their flags: an option with a default that applies only
# in some modes can then be refused where it would be ignored.

def given_options(names: Sequence[str]) -> list[str]:
    ctx = click.get_current_context()
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name in names else None
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            given.append(param.opts[0])
    return given

#----------------------------------------------------------------------------
# Options of another command in one string, split as a POSIX shell would
# ("--desc='a b' --lr=1e-4"); unbalanced quotes are refused.

class ShellWords(click.ParamType):
    name = 'STR'

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        try:
            return shlex.split(str(value))
        except ValueError as e:
            self.fail(f'{value!r}: {e} (the options are split as a shell would split them)', param, ctx)

#----------------------------------------------------------------------------
# A float option with a range that also refuses NaN, and infinity unless
# allowed (click's FloatRange lets both through: every comparison with NaN is
# false).

class FiniteFloat(click.FloatRange):
    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False, allow_inf: bool = False):
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.allow_inf = allow_inf

    def _describe_range(self) -> str:
        # Click writes an unbounded range as "x<=None"; without bounds the help shows no range.
        if self.min is None and self.max is None:
            return ''
        return super()._describe_range()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        result = super().convert(value, param, ctx)
        if math.isnan(result) or (math.isinf(result) and not self.allow_inf):
            self.fail(f'{value!r} is not a finite number', param, ctx)
        return result

#----------------------------------------------------------------------------
# Another tool's arguments, parsed as that tool parses them (a tool checks the
# options it passes on before running the step): `required` stands in for the
# options the caller sets, and `set_here` names the parameters it sets itself,
# which `args` must leave out. An error is one line naming `option`.

def parse_tool_args(command: click.Command, prog: str, args: Sequence[str], option: str, required: Sequence[str] = (),
                    set_here: Sequence[str] = (), setter: str = 'sfbd.rounds') -> click.Context:
    try:
        ctx = command.make_context(prog, [*required, *args], resilient_parsing=False)
    except click.ClickException as e:
        raise UserError(f'{option}: {e.format_message()}') from None
    given = [param for param in command.params if param.name in set_here
             and any(arg.split('=')[0] in param.opts for arg in args)]
    if given:
        raise UserError(f'{option}: {given[0].opts[-1]} is set by {setter} itself; leave it out')
    return ctx

#----------------------------------------------------------------------------
