"""The symbols of an object file: what a JIT must provide to load it, and what it defines.

numba keeps each cached kernel's machine code as an object file (ELF, but
Mach-O on macOS: on Windows numba's JIT code model asks LLVM for ELF; the
COFF reader serves the tests' probes), in its disk cache and, for a kernel
compiled in this process, in the kernel's code library. A symbol the object
uses but does not define must be found when the JIT links it; one the JIT
lacks (``__truncsfbf2``) aborts the process. The functions it defines are the
kernel, its wrappers, and any helper the compiler left a call to. Reading
the object's symbol table answers for cached kernels too, where numba keeps
no assembly.

    undefined_symbols(object_code) -> set of names
    defined_functions(object_code) -> set of names
"""
import struct

__all__ = ["undefined_symbols", "defined_functions"]

# What each format's reader yields per symbol: (name, "undefined" | "function" | "other").
UNDEFINED, FUNCTION, OTHER = "undefined", "function", "other"


def _elf64(data):
    """The entries of a 64-bit little-endian ELF object's symbol tables (section
    type 2): undefined where their section index is 0 (SHN_UNDEF), functions
    where their type is STT_FUNC (2)."""
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    # name, type, flags, address, offset, size, link, info, alignment, entry size
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size)
                for i in range(count)]
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2:
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, symbol_size):
            name, info, _, section = struct.unpack_from("<IBBH", data, at)
            if name:
                yield (_c_string(data, strings + name),
                       UNDEFINED if section == 0 else FUNCTION if info & 0xF == 2 else OTHER)


def _macho64(data):
    """The non-debug entries of a 64-bit Mach-O object's LC_SYMTAB (load command
    2), less the C underscore: undefined where external, of type N_UNDF and
    value 0 (a nonzero value is a common symbol's size: numba's environment
    globals); functions where defined in a section of machine instructions
    (S_ATTR_PURE_INSTRUCTIONS, listed by the LC_SEGMENT_64 commands)."""
    commands, = struct.unpack_from("<I", data, 16)
    at, numbered, code_sections, symtab = 32, 0, set(), None
    for _ in range(commands):
        command, size = struct.unpack_from("<II", data, at)
        if command == 0x19:   # LC_SEGMENT_64: 72 bytes, then 80 per section, numbered from 1
            sections, = struct.unpack_from("<I", data, at + 64)
            for i in range(sections):
                numbered += 1
                flags, = struct.unpack_from("<I", data, at + 72 + 80 * i + 64)
                if flags & 0x80000000:
                    code_sections.add(numbered)
        elif command == 2:
            symtab = struct.unpack_from("<IIII", data, at + 8)
        at += size
    if symtab is None:
        return
    symbols, count, strings, _ = symtab
    for i in range(count):
        name, kind, section, _, value = struct.unpack_from("<IBBHQ", data, symbols + 16 * i)
        if kind & 0xE0:
            continue
        name = _c_string(data, strings + name).removeprefix("_")
        if kind & 0x01 and kind & 0x0E == 0 and value == 0:
            yield name, UNDEFINED
        else:
            yield name, FUNCTION if kind & 0x0E == 0x0E and section in code_sections else OTHER


def _coff(data):
    """The symbols of a COFF object: undefined where external (storage class 2)
    of section 0 with value 0 (a nonzero value is a common symbol's size);
    functions where in a section and of type 0x20 (DT_FUNCTION), a weak one
    under the name it defines."""
    table, count = struct.unpack_from("<II", data, 8)
    strings = table + 18 * count
    i = 0
    while i < count:
        at = table + 18 * i
        short, long_offset, value, section, kind, storage, aux = \
            struct.unpack_from("<4sIIhHBB", data, at)
        name = (_c_string(data, strings + long_offset) if short == b"\0\0\0\0"
                else data[at:at + 8].rstrip(b"\0").decode())
        if name.startswith(".weak.") and ".default." in name:
            # a weak definition (LLVM's linkonce_odr) of X: `.weak.X.default.<a strong symbol>`
            name = name[len(".weak."):name.index(".default.")]
        if storage == 2 and section == 0 and value == 0:
            yield name, UNDEFINED
        else:
            yield name, FUNCTION if section > 0 and kind == 0x20 else OTHER
        i += 1 + aux


def _c_string(data, at):
    return data[at:data.index(b"\0", at)].decode()


def _symbols(object_code):
    """(name, kind) of each symbol of `object_code` (bytes of an ELF, Mach-O or COFF object)."""
    if object_code[:4] == b"\x7fELF":
        if object_code[4:6] != b"\x02\x01":
            raise ValueError("only 64-bit little-endian ELF objects are read")
        return _elf64(object_code)
    if object_code[:4] == b"\xcf\xfa\xed\xfe":
        return _macho64(object_code)
    if object_code[:2] in (b"\x64\x86", b"\x64\xaa"):   # x86-64, arm64
        return _coff(object_code)
    raise ValueError(f"not an object file this reader knows: starts {object_code[:4]!r}")


def undefined_symbols(object_code):
    """The names `object_code` (bytes of an ELF, Mach-O or COFF object) uses but does not define."""
    return {name for name, kind in _symbols(object_code) if kind == UNDEFINED}


def defined_functions(object_code):
    """The names of the functions `object_code` defines (its machine code's entry points)."""
    return {name for name, kind in _symbols(object_code) if kind == FUNCTION}
