"""The rules every write of an output keeps: one lock per output name, a guarded file that stops at
the first failed write, a temporary name renamed into place, one-line errors for the file system."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat

from ..errors import InputError, OutputError, WriteFailed


def first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


#: Suffix of the new file that `--overwrite` writes beside the old one until it is complete.
TMP_SUFFIX = ".vggfeat-tmp"


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class GuardedIO:
    """A file object for h5py's file-object driver that turns the first failed write into a stop.

    After a write fails (ENOSPC, EIO, EDQUOT...), the file on disk is left as it was before the
    failure, as if the process had been killed there (which `--resume` repairs), and `error` holds the
    failure; the writer checks it after each flush and stops the run with it. HDF5 must not notice:
    a failed write inside HDF5's metadata cache leaves its structures half updated, and HDF5 reading
    back bytes it believes written (but that were dropped) parses garbage and can crash the process.
    So from the failure on, every write, truncate and read goes to an in-memory copy of the pages
    written since (a page read from disk the first time it is touched): HDF5 sees a consistent file
    and closes cleanly, and the memory held is bounded by what HDF5 writes between the failure and
    the stop (at most one batch and the file's metadata).
    """

    PAGE = 4096

    def __init__(self, fd):
        self._f = os.fdopen(fd, "r+b", buffering=0)
        self._error: Exception | None = None
        self._pos = 0
        self._pages: dict[int, bytearray] = {}  # after a failure: page number -> its bytes as HDF5 sees them
        self._size = 0  # after a failure: the file's size as HDF5 sees it
        self._disk = 0  # after a failure: bytes past this are never read from disk (truncated away)

    @property
    def error(self) -> Exception | None:
        """The first failure: an OSError of a write, or what HDF5 raised while writing."""
        return self._error

    @error.setter
    def error(self, exc):
        """Stop writing to disk: from here on the file on disk stays as it is now."""
        if self._error is None and exc is not None:
            self._error = exc
            try:
                self._size = self._disk = os.fstat(self._f.fileno()).st_size
            except OSError:
                self._size = self._disk = 0

    def fileno(self):
        return self._f.fileno()

    def seek(self, offset, whence=0):
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._eof() + offset
        return self._pos

    def tell(self):
        return self._pos

    def _eof(self):
        return os.fstat(self._f.fileno()).st_size if self.error is None else self._size

    def readinto(self, b):
        view = memoryview(b).cast("B")
        if self.error is None:
            n = os.preadv(self._f.fileno(), [view], self._pos)
        else:
            n = max(0, min(len(view), self._size - self._pos))
            done = 0
            while done < n:
                page, start = divmod(self._pos + done, self.PAGE)
                k = min(n - done, self.PAGE - start)
                view[done:done + k] = self._page(page)[start:start + k]
                done += k
        self._pos += n
        return n

    def read(self, n=-1):
        if n is None or n < 0:
            n = max(0, self._eof() - self._pos)
        buf = bytearray(n)
        return bytes(buf[:self.readinto(buf)])

    def _page(self, page):
        """After a failure: the page's bytes as HDF5 sees them (read from disk the first time)."""
        got = self._pages.get(page)
        if got is None:
            got = bytearray(self.PAGE)
            at = page * self.PAGE
            if at < self._disk:
                try:
                    data = os.pread(self._f.fileno(), min(self.PAGE, self._disk - at), at)
                except OSError:  # an unreadable page reads as zeros, as past the end
                    data = b""
                got[:len(data)] = data
            self._pages[page] = got
        return got

    def write(self, b):
        view = memoryview(b).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._f.fileno(), view[done:], self._pos + done)
            except OSError as exc:
                self.error = exc
        if self.error is not None:  # kept in memory: HDF5 reads back what it wrote
            done = 0
            while done < len(view):
                page, start = divmod(self._pos + done, self.PAGE)
                k = min(len(view) - done, self.PAGE - start)
                self._page(page)[start:start + k] = view[done:done + k]
                done += k
            self._size = max(self._size, self._pos + len(view))
        self._pos += len(view)
        return len(view)

    def truncate(self, size=None):
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._f.truncate(size)
                return size
            except OSError as exc:
                self.error = exc
        if size < self._size:  # the bytes cut off read as zeros if the file grows again
            self._disk = min(self._disk, size)
            cut, start = divmod(size, self.PAGE)
            for page in [p for p in self._pages if p > cut]:
                del self._pages[page]
            if start and cut in self._pages:
                self._pages[cut][start:] = bytes(self.PAGE - start)
            elif cut in self._pages:
                del self._pages[cut]
        self._size = size
        return size

    def flush(self):
        pass

    def sync(self):
        if self.error is None:
            try:
                os.fsync(self._f.fileno())
            except OSError as exc:
                self.error = exc

    def close(self):
        self._pages.clear()
        self._f.close()


def holder_of_lock(fd) -> str:
    """' (pid N)' of the process holding a lock on the file of `fd`, where Linux says (/proc/locks)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as locks:
            for line in locks:
                parts = line.split()
                if len(parts) < 6:
                    continue
                dev_inode = parts[5].split(":")
                if len(dev_inode) == 3 and int(dev_inode[2]) == st.st_ino and parts[4].isdigit() \
                        and int(parts[4]) != os.getpid():
                    return f" (pid {parts[4]})"
    except (OSError, ValueError):
        pass
    return ""


def lock(fd, path, shared=False):
    """Take the lock HDF5 takes (flock), without waiting; a held lock is a one-line error."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"{path} is in use by another process{holder_of_lock(fd)}: another vggfeat "
                              "run is writing it; wait for it to finish") from None
        if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):  # no locks on this filesystem
            raise OutputError(f"cannot lock {path}: {exc.strerror}") from None


def os_error(path, exc, doing="write") -> OutputError:
    reason = getattr(exc, "strerror", None) or first_line(exc)
    if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(f"cannot {doing} {path}: {reason}; choose a folder you can write to")
    hint = "; the rows committed before it are kept: fix the cause and run again with --resume"
    if doing != "write":
        hint = "; free some space first" if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) else ""
    elif getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        hint = "; the rows committed before it are kept: free some space (or copy the file elsewhere) and run " \
               "again with --resume"
    return WriteFailed(f"cannot {doing} {path}: {reason}{hint}")


def open_fd(path, flags, doing):
    try:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
    except FileExistsError:
        raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it") from None
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise OutputError(f"{path} is a folder") from None
    except OSError as exc:
        raise os_error(path, exc, doing) from None


def h5_error(path, exc) -> OutputError:
    text = first_line(exc)
    if "signature" in text.lower() or "not an hdf5" in text.lower():
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        what = "an empty file (0 bytes)" if size == 0 else "not an HDF5 file"
        return OutputError(f"{path} is {what}")
    if "truncated file" in text.lower():  # HDF5's own words; "sblock" below is not a lock
        return OutputError(f"{path} is truncated (its end is missing: a copy or a download cut short?); it "
                           "cannot be opened")
    if re.search(r"\block(ing)?\b", text.lower()):
        return OutputError(f"{path} is in use by another process: another program is writing it")
    return OutputError(f"cannot open {path} as HDF5: {text}")


#: suffixes of other formats: an output named so would be an HDF5 file under a misleading name
_OTHER_FORMATS = {".npy": "NumPy", ".npz": "NumPy", ".csv": "CSV", ".tsv": "TSV", ".txt": "text", ".json": "JSON",
                  ".pkl": "pickle", ".pickle": "pickle", ".parquet": "Parquet", ".pt": "PyTorch", ".pth": "PyTorch",
                  ".safetensors": "safetensors", ".mat": "MATLAB", ".feather": "Feather", ".arrow": "Arrow",
                  ".zarr": "Zarr", ".keras": "Keras", ".joblib": "joblib", ".skops": "skops"}


def check_suffix(path):
    """Refuse an output named like another format: vggfeat writes HDF5 (.h5)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _OTHER_FORMATS:
        raise OutputError(f"{path}: vggfeat writes HDF5, not {_OTHER_FORMATS[suffix]}; name the output "
                          f"{os.path.splitext(os.path.basename(path))[0]}.h5 (load_features then gives NumPy "
                          "arrays)")


def sync_folder(path):
    """fsync the folder of `path` (a rename in it reaches the disk); best effort."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(path):
    """Remove a leftover temporary file of an interrupted run, unless a running one holds it."""
    if not os.path.lexists(path):
        return
    fd = open_fd(path, os.O_RDONLY, "open")
    try:
        lock(fd, path)
    finally:
        os.close(fd)
    os.remove(path)


PARTS_SUFFIX = ".parts"


def parts_dir(output) -> str:
    """The folder of the parts of the index `output` (`features.h5` -> `features.h5.parts`)."""
    return os.fspath(output) + PARTS_SUFFIX


def parts_folders(output) -> tuple:
    """The two folders the parts of index `output` can be in: `OUT.parts` and, for the new parts of an
    `--overwrite` while the old ones are still named by the index, `OUT.parts.2` (in turn)."""
    return parts_dir(output), parts_dir(output) + ".2"


LOCK_SUFFIX = ".vggfeat-lock"


def lock_path(output) -> str:
    """The hidden file beside `output` whose lock stands for the output's name (`OutputLock`)."""
    output = os.path.abspath(os.fspath(output))
    return os.path.join(os.path.dirname(output), "." + os.path.basename(output) + LOCK_SUFFIX)


class OutputLock:
    """The one lock of an output name, whatever writes it: a single-file run (create, resume or
    overwrite), a run in parts, a Ray run, `merge`. An exclusive flock on a hidden file beside the output
    (`lock_path`), taken before anything is written and held until the run ends: a second writer of the
    same name is a one-line error naming the holder's pid. The file is removed on release; one that a
    killed run left is taken over (a lock dies with its process)."""

    def __init__(self, output):
        self.output = os.fspath(output)
        self.path = lock_path(output)
        self.fd = None
        for _ in range(100):  # a holder may remove the file between our open and our lock: open it again
            fd = open_fd(self.path, os.O_RDWR | os.O_CREAT, "create a lock file beside")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = holder_of_lock(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{self.output} is in use by another process{holder}: another vggfeat run "
                                      "is writing it; wait for it to finish") from None
                if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):  # no locks on this filesystem
                    return
                raise OutputError(f"cannot lock {self.output}: {exc.strerror}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)
        raise OutputError(f"cannot lock {self.output}: its lock file {self.path} keeps changing")

    @classmethod
    def probe(cls, output):
        """Refuse now (before anything is built) an output that another run is writing."""
        cls(output).release()

    def release(self):
        if self.fd is not None:
            try:
                os.remove(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def check_output(path, *, resume=False, overwrite=False):
    """Every check of an output name that needs nothing built, for every kind of run: the folder exists
    and can be written, an existing file is refused unless resumed or overwritten, an output that another
    run writes (in any mode: `OutputLock`) is refused."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)):  # `-o newdir/`: a folder meant, whether it exists or not
        there = "" if os.path.isdir(path) else ", which does not exist"
        raise OutputError(f"the output {path} names a folder{there}; give the file to write, e.g. "
                          f"{os.path.join(path, 'features.h5')}")
    if os.path.isdir(path):
        raise OutputError(f"the output is a folder: {path}")
    check_suffix(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"the output folder does not exist: {parent}")
    exists = os.path.lexists(path)
    if exists and not (resume or overwrite):
        raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    if exists:
        fd = open_fd(path, os.O_RDONLY, "open")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputError(f"{path} is not a regular file")
            lock(fd, path)
            if resume:
                head = os.pread(fd, 8, 0)
                if head != HDF5_SIGNATURE:
                    what = "an empty file (0 bytes)" if not head else "not an HDF5 file"
                    raise OutputError(f"cannot resume {path}: it is {what}; it was left as it is "
                                      "(--overwrite replaces it)")
        finally:
            os.close(fd)
    if not (exists and resume):
        # create and remove a probe: a read-only or full folder is an error now, not after the model
        probe = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.probe")
        fd = open_fd(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "create a file beside")
        try:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                raise os_error(path, exc) from None
        finally:
            os.close(fd)
            os.remove(probe)
    elif not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: permission denied")
    OutputLock.probe(path)  # another run writing this name (in any mode) is refused now
