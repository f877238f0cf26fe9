"""The symbols an object file needs from elsewhere: what a JIT must provide to load it.

numba keeps each cached kernel's machine code as an object file (ELF on
Linux, Mach-O on macOS, COFF on Windows), in its disk cache and, for a kernel
compiled in this process, in the kernel's code library. A symbol the object
uses but does not define must be found when the JIT links it; one the JIT
lacks (``__truncsfbf2``) aborts the process. Reading the object's symbol
table answers for cached kernels too, where numba keeps no assembly.

    undefined_symbols(object_code) -> set of names
"""
import struct

__all__ = ["undefined_symbols"]


def _elf64(data):
    """Undefined symbols of a 64-bit little-endian ELF object: the entries of its
    symbol tables (section type 2) whose section index is 0 (SHN_UNDEF)."""
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    # name, type, flags, address, offset, size, link, info, alignment, entry size
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size)
                for i in range(count)]
    found = set()
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2:
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, symbol_size):
            name, _, _, section = struct.unpack_from("<IBBH", data, at)
            if name and section == 0:
                found.add(_c_string(data, strings + name))
    return found


def _macho64(data):
    """Undefined symbols of a 64-bit Mach-O object: the external, non-debug entries
    of its LC_SYMTAB (load command 2) whose type is N_UNDF and value 0 (a nonzero
    value is a common symbol's size: numba's environment globals), less the C
    underscore."""
    commands, = struct.unpack_from("<I", data, 16)
    at, found = 32, set()
    for _ in range(commands):
        command, size = struct.unpack_from("<II", data, at)
        if command == 2:
            symbols, count, strings, _ = struct.unpack_from("<IIII", data, at + 8)
            for i in range(count):
                name, kind, _, _, value = struct.unpack_from("<IBBHQ", data, symbols + 16 * i)
                if kind & 0xE0 == 0 and kind & 0x01 and kind & 0x0E == 0 and value == 0:
                    found.add(_c_string(data, strings + name).removeprefix("_"))
        at += size
    return found


def _coff(data):
    """Undefined symbols of a COFF object: external entries (storage class 2) of
    section 0 with value 0 (a nonzero value is a common symbol's size)."""
    table, count = struct.unpack_from("<II", data, 8)
    strings = table + 18 * count
    found, i = set(), 0
    while i < count:
        at = table + 18 * i
        short, long_offset, value, section, _, storage, aux = \
            struct.unpack_from("<4sIIhHBB", data, at)
        if storage == 2 and section == 0 and value == 0:
            found.add(_c_string(data, strings + long_offset) if short == b"\0\0\0\0"
                      else data[at:at + 8].rstrip(b"\0").decode())
        i += 1 + aux
    return found


def _c_string(data, at):
    return data[at:data.index(b"\0", at)].decode()


def undefined_symbols(object_code):
    """The names `object_code` (bytes of an ELF, Mach-O or COFF object) uses but does not define."""
    if object_code[:4] == b"\x7fELF":
        if object_code[4:6] != b"\x02\x01":
            raise ValueError("only 64-bit little-endian ELF objects are read")
        return _elf64(object_code)
    if object_code[:4] == b"\xcf\xfa\xed\xfe":
        return _macho64(object_code)
    if object_code[:2] in (b"\x64\x86", b"\x64\xaa"):   # x86-64, arm64
        return _coff(object_code)
    raise ValueError(f"not an object file this reader knows: starts {object_code[:4]!r}")
