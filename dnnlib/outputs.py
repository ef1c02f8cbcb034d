"""Where a command may write: output folders and files shared by every command-line tool.

The rules, checked before any work is done:

- An output never is, lies inside or contains one of the command's inputs, or another of its
  outputs (`check_apart`).
- An output file is not a directory, and its folder can be made and written (`check_output_file`).
  One that the command replaces as a whole may only replace its own earlier output (`check_replaced_file`).
- An output folder is new, empty, or one that the same command made before: it holds the
  command's record (e.g. `denoise_options.json`). A dataset, an observation set or any other
  folder with files in it is refused (`check_output_dir`).

A command claims its output folder by writing the record create-exclusively (`OutputClaim`),
only once its inputs have been checked: of several runs starting at once with different options
exactly one wins, and every other stops with a one-line error. A later run with other options is
refused once outputs depend on the record; a record that no output depends on yet is replaced,
unless the run that wrote it may still be running. A run that fails before writing any output
removes the record it wrote, so that the corrected command is not refused.

Every tool applies these rules through one helper, `ToolOutputs`: its outputs and inputs are listed
once, checked once (`check`) and the folder claimed once (`claim`). This module knows nothing of
what a tool computes; it only decides where it may write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
import uuid
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from dnnlib.util import UserError, current_umask, is_environment_error, is_url

#----------------------------------------------------------------------------
# How two paths relate: 'is', 'is inside' or 'contains' (path a relative to
# path b), or None when neither holds the other. Symbolic links are resolved.

def path_relation(a: str, b: str) -> str | None:
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb or (os.path.exists(ra) and os.path.exists(rb) and os.path.samefile(ra, rb)):
        return 'is'
    if ra.startswith(rb.rstrip(os.sep) + os.sep):
        return 'is inside'
    if rb.startswith(ra.rstrip(os.sep) + os.sep):
        return 'contains'
    return None

def check_apart(outputs: Sequence[tuple[str | None, str]], inputs: Sequence[tuple[str | None, str]] = ()) -> None:
    """Refuse an output (path, option) that is, lies inside or contains an input or another output,
    or that lies inside a set of images (`check_outside_sets`). None entries (options not given),
    URLs and inputs that do not exist (their own check names them) are skipped."""
    def local(pairs: Sequence[tuple[str | None, str]]) -> list[tuple[str, str]]:
        return [(path, option) for path, option in pairs if path is not None and not is_url(path)]
    outs, given = local(outputs), local(inputs)
    empty = next((option for path, option in [*outs, *given] if not path), None)
    if empty is not None:
        raise UserError(f'{empty}: an empty path')
    ins = [(path, option) for path, option in given if os.path.exists(path)]
    for k, (path, option) in enumerate(outs):
        for other, other_option in ins:
            relation = path_relation(path, other)
            if relation is not None:
                raise UserError(f'{option}={path}: {relation} the input {other_option}={other}; '
                                'outputs must be kept apart from the inputs')
        for other, other_option in outs[k + 1:]:
            relation = path_relation(path, other)
            if relation is not None:
                raise UserError(f'{option}={path}: {relation} the output {other_option}={other}; '
                                'each output needs a place of its own')
    for path, option in outs:
        check_no_broken_link(path, option)
        check_outside_sets(path, option)

# An absolute path and each folder above it, up to the root.
def _path_and_parents(path: str) -> Iterator[str]:
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent

# An output at or below a symbolic link whose target is missing (a disk that
# is not mounted, say) would fail to be made, or replace the link: refused.
def check_no_broken_link(path: str, option: str) -> None:
    for current in _path_and_parents(os.path.abspath(path)):
        if os.path.islink(current) and not os.path.exists(current):
            raise UserError(f'{option}={path}: {current} is a broken symbolic link (to {os.readlink(current)})')

#----------------------------------------------------------------------------
# Sets of images that other commands read whole, known by the file each keeps
# at its top: a dataset or an observation set (dataset.json, as EDM's
# dataset_tool writes it), and the image folders of generate.py, denoise.py and
# fid.py calc --outdir (their records). Anything written inside one would join
# the set (an image, a folder of them) or break it (a dataset.json), so no
# output goes there; the folder itself is `check_output_dir`'s to judge.

SET_MARKERS = ('dataset.json', 'generate_options.json', 'denoise_options.json', 'fid_options.json')

def check_outside_sets(path: str, option: str) -> None:
    """Refuse an output that lies inside a set of images, or a file named dataset.json."""
    if os.path.basename(os.path.normpath(path)) == 'dataset.json':
        raise UserError(f'{option}={path}: dataset.json is the name of a dataset\'s own file; choose another name')
    for folder in _path_and_parents(os.path.dirname(os.path.realpath(path))):
        marker = next((name for name in SET_MARKERS if os.path.isfile(os.path.join(folder, name))), None)
        if marker is not None:
            raise UserError(f'{option}={path}: lies inside {folder}, a set of images ({marker}); '
                            'outputs must not be written into one')

#----------------------------------------------------------------------------
# Inputs that are read as one (train.py's --data and --noisy, a merge's
# sources) must be different sets: the same set twice, under any spelling or
# through a link, would silently count twice. Entries are (path, option);
# None entries, URLs and paths that do not exist are left to their own checks.

def check_distinct(inputs: Sequence[tuple[str | None, str]]) -> None:
    """Refuse two entries that are the same file or directory."""
    seen: list[tuple[str, str]] = []
    for path, option in inputs:
        if path is None or is_url(path) or not os.path.exists(path):
            continue
        for other, other_option in seen:
            if path_relation(path, other) == 'is':
                same = f'{option}={path} is given twice' if (path, option) == (other, other_option) else \
                       f'{option}={path} and {other_option}={other} are the same set'
                raise UserError(f'{same}; give each set once (a repeated set would count twice)')
        seen.append((path, option))

#----------------------------------------------------------------------------
# Output paths that cannot be written: a directory where a file is expected,
# a file where a directory is expected, a file on the way, a read-only place.

def _nearest_existing(path: str) -> str:
    candidates = list(_path_and_parents(os.path.abspath(path)))
    return next((folder for folder in candidates if os.path.exists(folder)), candidates[-1])

def _check_parent(path: str, option: str) -> None:
    # The deepest existing folder on the way to `path` must be a folder and writable.
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise UserError(f'{option}={path}: {parent} is a file, not a directory')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f'{option}={path}: {parent} is not writable')

def check_output_file(path: str, option: str) -> None:
    """An output file: not a directory, in a folder that exists or can be made, and writable."""
    if not path:
        raise UserError(f'{option}: an empty path')
    if os.path.isdir(path):
        raise UserError(f'{option}={path}: is a directory; expected a file name')
    _check_parent(path, option)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f'{option}={path}: the file is not writable')

def check_replaced_file(path: str, option: str, command: str, is_own: Callable[[str], bool]) -> None:
    """An output file that the command replaces as a whole: `check_output_file`, and a file already
    there must be the command's own earlier output (`is_own(path)`); any other file is refused."""
    check_output_file(path, option)
    if os.path.exists(path) and not is_own(path):
        raise UserError(f'{option}={path}: exists and is not an output of {command}; choose a new file name '
                        'or delete it')

def check_output_dir(path: str, option: str, command: str | None = None,
                     markers: Sequence[str] = ()) -> None:
    """An output folder: not a file, makeable and writable. With `command`, it must also be new,
    empty or one that the command made (it holds a file named by one of `markers`, fnmatch patterns)."""
    if not path:
        raise UserError(f'{option}: an empty path')
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'{option}={path}: is a file, not a directory')
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f'{option}={path}: the folder is not writable')
    else:
        _check_parent(path, option)
    if command is None or not os.path.isdir(path):
        return
    import fnmatch
    names = sorted(name for name in os.listdir(path) if not name.startswith('.'))
    if not names or any(fnmatch.fnmatch(name, marker) for name in names for marker in markers):
        return
    what = 'holds a dataset' if 'dataset.json' in names else 'is not empty'
    shown = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
    raise UserError(f'{option}={path}: {what} ({shown}) that {command} did not make; choose a new or empty directory')

def any_file(path: str, suffixes: Sequence[str]) -> bool:
    """Does the folder `path` hold (at any depth) a file whose name ends with one of `suffixes`?
    Hidden files (temporaries) do not count."""
    for _root, _dirs, files in os.walk(path):
        if any(name.endswith(tuple(suffixes)) and not name.startswith('.') for name in files):
            return True
    return False

#----------------------------------------------------------------------------
# PNG outputs written atomically are whole; one that another program cut
# short, or a file system emptied after a crash, is not: such a file does not
# count as done. With `shape` ([C, H, W]), an image of another size or channel
# count (another program's file) does not either. Reads the first 26 and the
# last 12 bytes (about 30 us a file: 1.5 s for 50,000 images on a local disk).

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'  # The IEND chunk: length 0, type, CRC.
_PNG_COLOR_TYPE = {1: 0, 3: 2}  # Channels => IHDR colour type of an 8-bit PNG (grayscale, RGB).

def png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """A PNG's IHDR chunk, which follows the signature, read from a file's first 26 bytes:
    (width, height, bit depth, colour type); None for a file of another format."""
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b'IHDR':
        return None
    return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big'), head[24], head[25]

def is_complete_png(path: str, shape: Sequence[int] | None = None) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        header = png_header(os.read(fd, 26))
        if size < 26 + len(_PNG_END) or header is None:
            return False
        if shape is not None:
            c, h, w = shape
            if header != (w, h, 8, _PNG_COLOR_TYPE.get(c)):
                return False
        os.lseek(fd, size - len(_PNG_END), os.SEEK_SET)
        return os.read(fd, len(_PNG_END)) == _PNG_END
    except OSError:
        return False
    finally:
        os.close(fd)

#----------------------------------------------------------------------------
# Appending a line to a log that other runs may share (one write in append
# mode); a write cut short by a full disk is taken back, so that the file
# never ends in half a line, and a file that this write created goes again.

def append_line(path: str, line: str) -> None:
    data = (line.rstrip('\n') + '\n').encode('utf-8')
    try:
        try:
            fd, created = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            fd, created = os.open(path, os.O_WRONLY | os.O_APPEND), False
    except OSError as e:
        _raise_named(e, path)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                if created and os.fstat(fd).st_size == 0:
                    os.remove(path)
            _raise_named(e, path)
    finally:
        os.close(fd)

# A file that records may be appended to: an empty one, or JSON objects one per
# line (any command's records: several may share a log). Anything else, such
# as a dataset, a network or a figure, is not a log and must not grow a line.
def is_json_lines(path: str) -> bool:
    if os.path.basename(path) == 'dataset.json':  # One JSON object too, but a dataset's.
        return False
    try:
        with open(path, encoding='utf-8') as f:
            return all(isinstance(json.loads(line), dict) for line in f if line.strip())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError.
        return False

#----------------------------------------------------------------------------
# Records: JSON objects written create-exclusively. The writer is recorded
# under 'claimed_by' (host and process id), which comparisons ignore.

OWNER_KEY = 'claimed_by'

def _owner() -> dict:
    return dict(host=socket.gethostname(), pid=os.getpid())

def read_record(path: str) -> dict | None:
    """The JSON object in `path`, or None if there is no such file. A record that another process
    is still writing (empty or cut short) is read again for up to two seconds."""
    problem = None
    for _attempt in range(20):
        try:
            with open(path, 'r', encoding='utf-8') as f:
                record = json.load(f)
            if isinstance(record, dict):
                return record
            problem = 'not a JSON object'
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as e:
            problem = str(e)
        time.sleep(0.1)
    raise UserError(f'{path}: not a readable record ({problem}); delete it if no run uses this directory')

def create_exclusive(path: str, record: dict) -> bool:
    """Write `record` to `path` unless the file exists; True if this call wrote it. The content is
    complete before the name appears (hard link of a finished temporary file), or, where the file
    system has no hard links, the name is created exclusively and filled at once."""
    data = json.dumps(record, indent=2).encode('utf-8')
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    except OSError as e:
        _raise_named(e, path)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # No hard links here.
        try:
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(out, 'wb') as f:
            f.write(data)
        return True
    except OSError as e:
        _raise_named(e, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)

def _raise_named(e: OSError, path: str) -> None:
    # A full or read-only disk as one line naming the record; anything else as it is.
    if is_environment_error(e):
        raise UserError(f'{path}: cannot write ({e.strerror})') from None
    raise e

def may_be_running(record: dict) -> bool:
    """Might the process that wrote `record` still run? Known only on its own host."""
    owner = record.get(OWNER_KEY)
    if not isinstance(owner, dict):
        return False  # Written before owners were recorded.
    if owner.get('host') != socket.gethostname():
        return True
    pid = owner.get('pid')
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def differing_keys(recorded: dict, record: dict, ignore: Sequence[str] = ()) -> list[str]:
    """Keys whose values differ, nested dicts as 'key.subkey'; `ignore` and the owner excepted."""
    out = []
    for key in sorted(set(recorded) | set(record)):
        a, b = recorded.get(key), record.get(key)
        if key in ignore or key == OWNER_KEY or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f'{key}.{sub}' for sub in differing_keys(a, b)]
        else:
            out.append(key)
    return out

#----------------------------------------------------------------------------
# Claiming an output folder. Usage:
#
#     with OutputClaim(outdir, '--outdir', 'denoise_options.json', record, command='denoise.py',
#                      has_outputs=lambda: any_file(outdir, ['.png'])) as claim:
#         ...write outputs...
#
# Entering checks and writes the record; leaving on an error removes a record
# that this run wrote when no output exists yet.

class OutputClaim:
    def __init__(self,
        outdir:      str,                       # The output folder.
        option:      str,                       # Its option, for messages.
        record_name: str,                       # File name of the record inside the folder.
        record:      dict,                      # What decides the outputs (JSON data).
        command:     str,                       # The command, for messages.
        has_outputs: Callable[[], bool],        # Does the folder hold outputs that depend on the record?
        ignore:      Sequence[str] = (),        # Keys of the record that may differ between runs.
        markers:     Sequence[str] = (),        # More names that show the folder is the command's own.
        create:      bool = True,               # False: only check against an existing record.
    ):
        self.outdir, self.option, self.command = outdir, option, command
        self.path = os.path.join(outdir, record_name)
        self.record = dict(record)
        self.has_outputs, self.ignore = has_outputs, tuple(ignore)
        self.markers = (record_name, *markers)
        self.create = create
        self.created = False  # Did this run write the record?
        self.made_dir = False  # Did this run make the folder?

    def __enter__(self) -> 'OutputClaim':
        self.claim()
        return self

    def __exit__(self, exc_type: Any, _exc: Any, _tb: Any) -> None:
        if exc_type is not None:
            self.release()

    def claim(self) -> dict:
        """Check the folder and the record, writing it if needed; returns the record now in force."""
        try:
            return self._claim()
        except BaseException:
            if self.made_dir and not self.created:
                _remove_empty_tree(self.outdir)
            raise

    def _claim(self) -> dict:
        check_output_dir(self.outdir, self.option, self.command, self.markers)
        name = os.path.basename(self.path)
        for _attempt in range(10):
            recorded = read_record(self.path)
            if recorded is None:
                if not self.create:
                    raise UserError(f'{self.option}={self.outdir}: holds no {name}; {self.command} has not written there')
                self.made_dir = self.made_dir or not os.path.isdir(self.outdir)
                os.makedirs(self.outdir, exist_ok=True)
                mine = dict(self.record, **{OWNER_KEY: _owner()})
                if create_exclusive(self.path, mine):
                    self.created, self.record = True, mine
                    return mine
                continue  # Another run wrote it first: compare with theirs.
            differ = differing_keys(recorded, self.record, self.ignore)
            if not differ:
                self.record = recorded
                return recorded
            what = f'other options ({", ".join(differ)} differ, see {name})'
            if self.has_outputs() or not self.create:
                raise UserError(f'{self.option}={self.outdir}: holds outputs of {self.command} made with {what}; '
                                f'use another {self.option} or delete this one')
            if may_be_running(recorded):
                owner = recorded.get(OWNER_KEY, {})
                raise UserError(f'{self.option}={self.outdir}: claimed by another {self.command} with {what}, process '
                                f'{owner.get("pid")} on {owner.get("host")}, which may still be running; use another '
                                f'{self.option}, or delete {name} if that run has stopped')
            # No output depends on the stale record: set it aside (one run only can), then claim afresh.
            with contextlib.suppress(FileNotFoundError):
                aside = f'{self.path}.{uuid.uuid4().hex}.stale'
                os.rename(self.path, aside)
                os.remove(aside)
        raise UserError(f'{self.option}={self.outdir}: {name} keeps changing; is another {self.command} starting there?')

    def release(self) -> None:
        """Remove the record if this run wrote it, it is still this run's, and no output exists; then
        the folder too if this run made it and it is empty."""
        if not self.created:
            return
        with contextlib.suppress(UserError, OSError):
            recorded = read_record(self.path)
            if recorded is not None and recorded.get(OWNER_KEY) == self.record.get(OWNER_KEY) and not self.has_outputs():
                os.remove(self.path)
                self.created = False
                if self.made_dir:
                    _remove_empty_tree(self.outdir)

# Folders only, bottom up, and only those left empty (a file stops it).
def _remove_empty_tree(path: str) -> None:
    for root, _dirs, _files in os.walk(path, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(root)

#----------------------------------------------------------------------------
# The output rules of one run of a command, applied by one helper that every
# tool shares. The outputs are listed in the order their own checks run:
#
#     outputs = ToolOutputs('generate.py', [OutputDir(outdir, '--outdir', 'generate_options.json')],
#                           inputs=[(network_pkl, '--network')])
#     outputs.check()                  # Before any input is read.
#     ...read and check the inputs...
#     with outputs.claim(record):      # Writes the record; an error before any output takes it back.
#         ...write outputs...

class OutputFile(NamedTuple):
    path:   str | None                          # None: the option was not given.
    option: str                                 # Its option, for messages.
    is_own: Callable[[str], bool] | None = None # Given: the file is replaced as a whole, and only an earlier output
                                                # of the command (`check_replaced_file`) may be there.

class OutputDir(NamedTuple):
    path:        str | None                     # None: the option was not given.
    option:      str                            # Its option, for messages.
    record_name: str | None = None              # The command's record in it (claimed by `ToolOutputs.claim`).
    markers:     Sequence[str] = ()             # More names that show the folder is the command's own.

class ToolOutputs:
    def __init__(self,
        command: str,                                       # The command, for messages.
        outputs: Sequence[OutputFile | OutputDir],          # What it writes, in the order of their checks.
        inputs:  Sequence[tuple[str | None, str]] = (),     # What it reads: (path, option).
        nested:  bool = False,                              # May outputs lie inside one another (a file in the folder)?
        files_first: bool = False,                          # Check the files before the folder (else in list order).
    ):
        self.command, self.outputs, self.inputs, self.nested = command, list(outputs), list(inputs), nested
        self.files_first = files_first

    def check(self) -> None:
        """`check_apart`, then each output's own check."""
        self.check_apart()
        ordered = sorted(self.outputs, key=lambda out: isinstance(out, OutputDir)) if self.files_first else self.outputs
        for out in ordered:
            if out.path is None:
                continue
            if isinstance(out, OutputDir):
                markers = [out.record_name] if out.record_name is not None else []
                check_output_dir(out.path, out.option, self.command, [*markers, *out.markers])
            elif out.is_own is not None:
                check_replaced_file(out.path, out.option, self.command, out.is_own)
            else:
                check_output_file(out.path, out.option)

    def check_apart(self) -> None:
        """Every output apart from the inputs (and from each other unless nested), in list order. Alone for
        outputs that a writer of their own checks further (sfbd.observations.write_datasets)."""
        pairs = [(out.path, out.option) for out in self.outputs]
        if self.nested:
            for pair in pairs:
                check_apart([pair], self.inputs)
        else:
            check_apart(pairs, self.inputs)

    def claim(self, record: dict, *, create: bool = True, ignore: Sequence[str] = (), suffixes: Sequence[str] = ('.png',),
              has_outputs: Callable[[], bool] | None = None) -> contextlib.AbstractContextManager:
        """The claim of the output folder by `record` (`OutputClaim`), for a with-statement; the outputs
        that depend on it are the files ending with `suffixes`, or what `has_outputs` finds. Nothing to
        claim without a folder given."""
        dirs = [out for out in self.outputs if isinstance(out, OutputDir) and out.record_name is not None]
        if not dirs or dirs[0].path is None:
            return contextlib.nullcontext()
        path = dirs[0].path
        return OutputClaim(path, dirs[0].option, dirs[0].record_name, record, command=self.command, create=create,
                           has_outputs=has_outputs or (lambda: any_file(path, suffixes)), ignore=ignore,
                           markers=dirs[0].markers)

#----------------------------------------------------------------------------
