"""The checkpoint file: a zip of stored ``.npy`` members and meta.json, written atomically, read bounded.

Reading never trusts a size before checking it against another: the zip's end record
against the file's length, every member against the file (stored, never compressed,
so no member can expand beyond the bytes on disk), meta.json against a fixed limit, and
each array member against the bytes its manifest entry's shape and dtype need, all
before a byte of array data is read. Arrays are read in chunks straight into arrays of
the declared shape, so nothing allocates more than the manifest declares.
"""

import hashlib
import io
import json
import os
import struct
import zipfile

import numpy as np

from distdl.checkpoint import schema
from distdl.checkpoint.errors import CheckpointCorruptError, CheckpointError
from distdl.checkpoint.files import open_regular, temporary_path

META = "meta.json"
META_LIMIT = 64 << 20  # a manifest of 100,000 arrays and the RNG states of 4,096 ranks fit in a tenth of it
MAX_MEMBERS = 100_000  # a model's and its optimizer's arrays are thousands, not hundreds of thousands
CHUNK = 1 << 20
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError,
               struct.error, KeyError, IndexError, OverflowError)


def digest(array):
    """SHA-256 of the array's bytes (viewed as bytes: datetime arrays export no buffer of their own)."""
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def write(path, meta, arrays):
    """Write the checkpoint under a temporary name, fsync it, rename it into place, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in arrays.items():
                    with archive.open(meta["manifest"][name]["member"], "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
                archive.writestr(META, json.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def npy_header(dtype, shape):
    """The ``.npy`` header that ``np.lib.format.write_array`` writes for a C-ordered array of this dtype and shape."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # too long for format 1.0: write_array falls back to 2.0 alike
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


def _members_declared(f, path, size):
    """The member count in the zip's end record (at the very end: distdl writes no comment), before parsing it."""
    if size < 22:
        raise CheckpointCorruptError(f"{path}: not a readable checkpoint ({size} bytes): truncated, or not a "
                                     "distdl checkpoint at all")
    f.seek(size - 22)
    end = f.read(22)
    if end[:4] != b"PK\x05\x06":
        raise CheckpointCorruptError(f"{path}: not a readable checkpoint (no zip end record at its end): "
                                     "truncated, or not a distdl checkpoint at all")
    count, directory_size = struct.unpack("<HI", end[10:16])
    if count == 0xFFFF or directory_size == 0xFFFFFFFF:  # the zip64 end record holds the true values
        if size < 22 + 20 + 56:
            raise CheckpointCorruptError(f"{path}: not a readable checkpoint (its zip64 end record is missing)")
        f.seek(size - 22 - 20)
        locator = f.read(20)
        offset = struct.unpack("<Q", locator[8:16])[0]
        if locator[:4] != b"PK\x06\x07" or offset > size - 22 - 20 - 56:
            raise CheckpointCorruptError(f"{path}: not a readable checkpoint (its zip64 end record is missing)")
        f.seek(offset)
        record = f.read(56)
        if record[:4] != b"PK\x06\x06":
            raise CheckpointCorruptError(f"{path}: not a readable checkpoint (its zip64 end record is damaged)")
        count, directory_size = struct.unpack("<QQ", record[32:48])
    if directory_size > size:
        raise CheckpointCorruptError(f"{path}: its zip directory claims {directory_size} bytes of a {size}-byte file")
    return count


class CheckpointFile:
    """An open checkpoint whose zip directory and metadata are checked; ``arrays()`` reads and verifies the data.

    Use as a context manager. ``within``: the directory the file must lie in (links
    may not lead out of it), as for the files a CheckpointManager finds.
    """

    def __init__(self, path, within=None):
        self.path = os.fspath(path)
        self._file = open_regular(self.path, within)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self):
        path, size = self.path, os.fstat(self._file.fileno()).st_size
        self._zip = None
        count = _members_declared(self._file, path, size)
        if count > MAX_MEMBERS:
            raise CheckpointCorruptError(f"{path}: its zip directory lists {count} members, more than the "
                                         f"{MAX_MEMBERS} any checkpoint needs")
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except _ZIP_ERRORS as exc:
            raise CheckpointCorruptError(f"{path}: not a readable checkpoint ({exc}): truncated, or not a distdl "
                                         "checkpoint at all") from None
        self._infos = {info.filename: info for info in infos}
        if len(self._infos) != len(infos):
            raise CheckpointCorruptError(f"{path}: its zip directory lists a member twice")
        if META not in self._infos:
            raise CheckpointError(f"{path}: not a distdl checkpoint (no meta.json inside)")
        for info in infos:
            if (info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size
                    or info.flag_bits & 1 or info.header_offset + info.compress_size > size):
                raise CheckpointCorruptError(
                    f"{path}: member {info.filename} is compressed, encrypted or larger than the file "
                    f"({info.file_size} bytes declared); distdl stores every member as it is, so it was not "
                    "written by distdl or was altered")
        meta_size = self._infos[META].file_size
        if meta_size > META_LIMIT:
            raise CheckpointCorruptError(f"{path}: its meta.json is {meta_size} bytes, over the limit of "
                                         f"{META_LIMIT}")
        self.meta = schema.parse(path, self._read(META, meta_size, "its meta.json"))
        self._check_members(size)

    def _check_members(self, size):
        path, manifest = self.path, self.meta["manifest"]
        expected = {entry["member"] for entry in manifest.values()} | {META}
        missing, extra = sorted(expected - set(self._infos)), sorted(set(self._infos) - expected)
        if missing or extra:
            raise CheckpointCorruptError(f"{path}: its zip members do not match its manifest (missing {missing}, "
                                         f"not listed {extra})")
        total = 0
        for name, entry in manifest.items():
            need = schema.nbytes(path, name, entry)
            header = len(npy_header(schema.dtype(path, name, entry), entry["shape"]))
            actual = self._infos[entry["member"]].file_size
            if actual != header + need:
                raise CheckpointCorruptError(f"{path}: array {name!r} has {actual} bytes in the zip directory, but "
                                             f"its shape {entry['shape']} and dtype {entry['dtype']} need "
                                             f"{header + need}")
            total += need
        if total > size:
            raise CheckpointCorruptError(f"{path}: its manifest declares {total} bytes of arrays in a {size}-byte "
                                         "file: members overlap")

    def _read(self, member, size, what):
        try:
            with self._zip.open(self._infos[member]) as f:
                data = f.read(size)
        except _ZIP_ERRORS as exc:
            raise CheckpointCorruptError(f"{self.path}: {what} cannot be read ({exc})") from None
        if len(data) != size:
            raise CheckpointCorruptError(f"{self.path}: {what} is truncated")
        return data

    def arrays(self):
        """Every array of the manifest, read in chunks into arrays of its declared shape and checked by SHA-256."""
        return {name: self._array(name, entry) for name, entry in self.meta["manifest"].items()}

    def _array(self, name, entry):
        dtype = schema.dtype(self.path, name, entry)
        header = npy_header(dtype, entry["shape"])
        array = np.empty(entry["shape"], dtype)
        target = array.reshape(-1).view(np.uint8)
        try:
            with self._zip.open(self._infos[entry["member"]]) as f:
                if f.read(len(header)) != header:
                    raise CheckpointCorruptError(f"{self.path}: array {name!r} has an .npy header that does not "
                                                 "match its manifest entry")
                position = 0
                while position < target.size:
                    chunk = f.read(min(CHUNK, target.size - position))
                    if not chunk:
                        raise CheckpointCorruptError(f"{self.path}: array {name!r} is truncated")
                    target[position:position + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    position += len(chunk)
                f.read(1)  # at the end: zipfile checks the member's CRC-32
        except _ZIP_ERRORS as exc:
            raise CheckpointCorruptError(f"{self.path}: array {name!r} cannot be read ({exc})") from None
        if digest(array) != entry["sha256"]:
            raise CheckpointCorruptError(f"{self.path}: array {name!r} does not match its SHA-256 in the manifest: "
                                         "the file was corrupted after it was written")
        return array

    def close(self):
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
