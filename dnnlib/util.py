"""Plain helpers: attribute dictionaries, URL and path opening with a download cache, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import importlib
import os
import re
import tempfile
import urllib.parse
from typing import IO, Any, Callable, Iterator

#----------------------------------------------------------------------------
# A dict whose keys can also be read and written as attributes.

class EasyDict(dict):
    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

#----------------------------------------------------------------------------
# Errors that name the path or URL at fault. Command-line tools print the
# message and exit non-zero.

class UserError(RuntimeError):
    """Bad input from the user: the message alone says what is wrong."""

# A data-loading worker's UserError reaches the main process re-raised with the
# worker's traceback in its message ("Caught UserError in DataLoader worker
# process 0. Original Traceback ... UserError: <message>"): the user's message
# is the last line, after the exception's name.
def user_message(e: UserError) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith('Caught '):
        return lines[-1].split(': ', 1)[-1]
    return one_line(str(e))

# A message as one line: control characters (a newline in a file name, say)
# are shown escaped, as Python writes them in a string.
def one_line(text: str) -> str:
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)

#----------------------------------------------------------------------------
# Download cache, laid out as EDM's: `$DNNLIB_CACHE_DIR`, else `~/.cache/dnnlib`,
# with a download of URL u kept as `<md5(u)>_<name>`. Any file of that prefix
# counts as the download, whatever name followed it, so this repository and EDM
# find each other's files (EDM names them after the whole URL or the server's
# file name, this repository after the URL's last path component).

def make_cache_dir_path(*paths: str) -> str:
    """A path in the dnnlib cache folder (EDM's name)."""
    root = os.environ.get('DNNLIB_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib')
    return os.path.join(root, *paths)

def is_url(obj: Any) -> bool:
    if not isinstance(obj, str) or '://' not in obj:
        return False
    try:
        scheme = urllib.parse.urlparse(obj).scheme
    except ValueError as e:  # E.g. an unclosed IPv6 bracket.
        raise UserError(f'{obj}: not a valid URL ({e})') from None
    return scheme in ('http', 'https', 'file')

def cached_path_for_url(url: str, cache_root: str | None = None) -> str:
    """The cached download of `url` if there is one (EDM's or ours), else where a download goes."""
    root = cache_root or make_cache_dir_path('downloads')
    digest = hashlib.md5(url.encode('utf-8')).hexdigest()
    found = sorted(glob.glob(os.path.join(glob.escape(root), f'{digest}_*')))
    found = [path for path in found if os.path.isfile(path)]
    if found:
        return found[0]
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    name = re.sub(r'[^0-9A-Za-z._-]', '_', name)
    return os.path.join(root, f'{digest}_{name}')

def download(url: str, *, cache: bool = True, cache_root: str | None = None, timeout: float = 30,
             num_attempts: int = 3, max_seconds: float = 1800, verbose: bool = True) -> str:
    """Fetch `url` to the download cache (once) and return the local path."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == 'file':
        path = urllib.parse.unquote(parsed.path)
        if not os.path.isfile(path):
            raise UserError(f'{url}: no such file')
        return path
    target = cached_path_for_url(url, cache_root)
    if cache and os.path.isfile(target):
        return target

    # Connecting is retried; a server that accepted but does not answer within
    # `timeout`, or that sends too slowly to finish within `max_seconds`, is
    # not (it would not do better on a second try).
    import time
    import requests  # Imported here: only downloads need it.
    last_error: Exception | None = None
    deadline = time.monotonic() + max_seconds
    for _attempt in range(num_attempts):
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                response.raise_for_status()
                if verbose:
                    print(f'Downloading {url} ...', flush=True)
                with atomic_write(target, 'wb') as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        if time.monotonic() > deadline:
                            raise UserError(f'{url}: download not finished after {max_seconds:g} s; '
                                            'fetch the file by other means and give its path')
            return target
        except requests.HTTPError as e:
            raise UserError(f'{url}: download failed ({e})') from None
        except requests.ReadTimeout as e:
            raise UserError(f'{url}: the server sent nothing for {timeout:g} s ({e})') from None
        except (requests.RequestException, OSError) as e:
            last_error = e
    raise UserError(f'{url}: cannot be reached ({type(last_error).__name__}: {last_error})')

def open_url(url_or_path: str, cache_dir: str | None = None, num_attempts: int = 3, verbose: bool = True,
             return_filename: bool = False, cache: bool = True) -> Any:
    """Open a local path or a URL for binary reading; URLs go through the download cache (in `cache_dir`,
    default `make_cache_dir_path('downloads')`). EDM's keywords and order; with `return_filename`, the
    local file's path instead of an open file."""
    if is_url(url_or_path):
        path = download(url_or_path, cache=cache, cache_root=cache_dir, num_attempts=num_attempts, verbose=verbose)
    else:
        if not url_or_path:
            raise UserError('an empty path where a file was expected')
        if os.path.isdir(url_or_path):
            raise UserError(f'{url_or_path}: is a directory; expected a file')
        if not os.path.isfile(url_or_path):
            raise UserError(f'{url_or_path}: no such file')
        path = url_or_path
    return path if return_filename else open(path, 'rb')

#----------------------------------------------------------------------------
# Atomic file writes: write a temporary file beside the target, then rename.
# A crash or an error leaves either the old file or nothing, never half a file.

@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'wb') -> Iterator[IO[Any]]:
    tmp = None
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; follow the umask like open() does.
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if is_environment_error(e):  # A full or read-only disk: name the file, not the temporary.
            where = e.filename if e.filename not in (None, tmp) else path
            raise UserError(f'{where}: cannot write ({e.strerror})') from None
        raise

def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask

def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, 'wb') as f:
        f.write(data)

#----------------------------------------------------------------------------
# Errors of the environment rather than of the program: a full or read-only
# disk, a missing permission, a path through a file. They are reported like
# bad input; other OSErrors keep their traceback.

ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})

def is_environment_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS

#----------------------------------------------------------------------------
# Command-line entry points: a UserError (or an environment error) becomes one
# line on stderr and exit status 1 (click's own usage errors exit with 2),
# never a traceback.
#
# SIGTERM (kill, timeout, a scheduler ending a job) stops a command the way
# Ctrl-C does, as an exception, so that what it was writing is removed on the
# way out; the exit status is the shell's for SIGTERM (143). A command that
# handles SIGTERM itself (train.py's preemption) sets its own handler while
# it runs.

class Terminated(BaseException):
    """SIGTERM arrived (see report_user_errors)."""

def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise Terminated()

@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield  # Signals go to the main thread; a handler already set stays in charge.
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

def report_user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    import click

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_exception():
                return func(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(user_message(e)) from None
        except OSError as e:
            if not is_environment_error(e):
                raise
            where = f'{e.filename}: ' if e.filename is not None else ''
            raise click.ClickException(one_line(f'{where}{e.strerror}')) from None
        except Terminated:
            # torchrun ends every process this way once one has failed (that one's message is above).
            why = ' (torchrun stops every process when one fails)' if 'TORCHELASTIC_RUN_ID' in os.environ else ''
            click.echo(f'Stopped by SIGTERM{why}; nothing half-written is left.', err=True)
            raise SystemExit(143) from None
        except (RuntimeError, MemoryError) as e:
            if peer_failure(e):
                raise click.ClickException(PEER_FAILURE_MESSAGE) from None
            message = out_of_memory_message(e)
            if message is None:
                raise
            context = click.get_current_context(silent=True)
            params = context.command.params if context is not None else []
            options = {opt for param in params for opt in getattr(param, 'opts', [])}
            if '--batch-gpu' in options:
                message += '; a smaller --batch-gpu needs less (gradient accumulation keeps --batch)'
            elif '--batch' in options:
                message += '; a smaller --batch needs less'
            raise click.ClickException(message) from None
    return wrapper

# A collective of several processes that fails because another process of the
# run has ended: that process reports its own error, and this one says no more
# than that. gloo says that the connection closed; NCCL that the communicator
# was aborted or that a remote process exited.
PEER_FAILURE_MESSAGE = 'another process of this run failed (its error is in its own output); this one stops too'
_PEER_FAILURE_TEXTS = ('Connection closed by peer', 'Connection reset by peer', 'NCCL communicator was aborted',
                       'remote process exited', 'ncclRemoteError')

def peer_failure(e: BaseException) -> bool:
    several = int(os.environ.get('WORLD_SIZE', '1') or 1) > 1
    return several and isinstance(e, RuntimeError) and any(text in str(e) for text in _PEER_FAILURE_TEXTS)

# Running out of memory, on a GPU (torch.OutOfMemoryError) or on the host
# (torch's CPU allocator, or Python's MemoryError), as one line that says how
# much was asked for; None for any other error.
def out_of_memory_message(e: BaseException) -> str | None:
    text = str(e)
    if type(e).__name__ == 'OutOfMemoryError':  # torch.OutOfMemoryError, without importing torch here.
        asked = re.search(r'Tried to allocate ([0-9.]+ [KMGT]?i?B)', text)
        where = re.search(r'GPU (\d+) has a total capacity of ([0-9.]+ [KMGT]?i?B) of which ([0-9.]+ [KMGT]?i?B) is free', text)
        parts = ([f'asked for {asked[1]}'] if asked else []) + ([f'GPU {where[1]}: {where[3]} free of {where[2]}'] if where else [])
        return 'out of GPU memory' + (f' ({"; ".join(parts)})' if parts else '')
    if isinstance(e, MemoryError):
        return 'out of memory'
    asked = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if asked:
        return f'out of memory (asked for {int(asked[1]) / 2**30:.2f} GiB)'
    return None

#----------------------------------------------------------------------------
# Content digest of a local file or a URL (through the download cache).

def file_sha256(path_or_url: str) -> str:
    """Hex sha256 digest, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open_url(path_or_url) as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()

#----------------------------------------------------------------------------
# Parse comma-separated ranges such as '0-63' or '1,2,5-10' (EDM's --seeds).
# Values are 64-bit integers (seeds go to torch as such), at most
# MAX_INT_LIST of them, so that a typing slip cannot fill the memory. With
# `distinct`, a value given twice is refused (a seed list names each image once).

MAX_INT_LIST = 100_000_000

def parse_int_list(text: str | list[int], distinct: bool = False) -> list[int]:
    if isinstance(text, list):
        return text
    values: list[int] = []
    spans: list[tuple[int, int]] = []
    pattern = re.compile(r'^([0-9]+)-([0-9]+)$')
    for part in str(text).split(','):
        part = part.strip()
        if not part:
            continue
        m = pattern.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise UserError(f'range "{part}" ends before it starts')
            span = [lo, hi]
        else:
            if not re.fullmatch(r'[+-]?[0-9]+', part):
                raise UserError(f'"{part}" is not an integer or a range like 0-63')
            span = [int(part)] * 2
        if not all(-2**63 <= v < 2**63 for v in span):
            raise UserError(f'"{part}": values are 64-bit integers')
        if len(values) + span[1] - span[0] + 1 > MAX_INT_LIST:
            raise UserError(f'"{part}": more than {MAX_INT_LIST:,} values in all')
        values.extend(range(span[0], span[1] + 1))
        spans.append((span[0], span[1]))
    if distinct:
        check_distinct_spans(spans)
    return values

# Ranges overlap where one starts at or before the end of an earlier one (in
# order of their starts); that start is then a value of both.
def check_distinct_spans(spans: list[tuple[int, int]]) -> None:
    end = None
    for lo, hi in sorted(spans):
        if end is not None and lo <= end:
            raise UserError(f'{lo} is given more than once')
        end = hi if end is None else max(end, hi)

#----------------------------------------------------------------------------
# Objects named by their module path, as in configuration dictionaries
# (`class_name='training.networks.EDMPrecond'`); EDM's names.

def get_obj_by_name(name: str) -> Any:
    """The object named `module.path.obj` (or `module.Class.attr`: the longest importable module wins)."""
    parts = name.split('.')
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:split]))
        except (ImportError, ValueError, TypeError):  # Not a module; an empty or relative name.
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ValueError(f'cannot find "{name}"')

def call_func_by_name(*args: Any, func_name: str, **kwargs: Any) -> Any:
    return get_obj_by_name(func_name)(*args, **kwargs)

def construct_class_by_name(*args: Any, class_name: str, **kwargs: Any) -> Any:
    return get_obj_by_name(class_name)(*args, **kwargs)

# A duration for logs: "42s", "3m 07s", "2h 05m 09s", "1d 04h 12m".
def format_time(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {s // 3600 % 24:02d}h {s // 60 % 60:02d}m'

#----------------------------------------------------------------------------
# Save one image (uint8, [H, W, C] with C = 1 or 3) as a PNG, atomically,
# with optional text chunks (`text`: keyword -> value).

def save_png(path: str, image: Any, text: dict[str, str] | None = None) -> None:
    import numpy as np
    import PIL.Image
    import PIL.PngImagePlugin
    image = np.asarray(image)
    mode = 'L' if image.shape[2] == 1 else 'RGB'
    pil = PIL.Image.fromarray(image[:, :, 0] if mode == 'L' else image, mode)
    info = None
    if text:
        info = PIL.PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    with atomic_write(path, 'wb') as f:
        pil.save(f, format='png', pnginfo=info)

#----------------------------------------------------------------------------
