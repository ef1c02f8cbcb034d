# Small utilities shared by the command-line tools (EDM's `dnnlib`).

from .util import EasyDict, open_url

__all__ = ['EasyDict', 'open_url']
