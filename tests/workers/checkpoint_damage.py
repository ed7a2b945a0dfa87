"""Damage to checkpoint files, as faults do it: one byte of an array's data flipped in place."""

import zipfile


def flip_array_byte(path, member="arrays/000000.npy"):
    """Flip one byte in the middle of ``member``'s data, past its .npy header, leaving every size intact."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        offset = info.header_offset + 30 + name_length + extra_length + 128 + (info.file_size - 128) // 2
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
