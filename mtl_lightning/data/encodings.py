"""Decode a text file (CSV manifest or table): UTF-8 with or without BOM, UTF-16, or as declared.

The rules, shared by :func:`~mtl_lightning.data.manifest.read_manifest` and
:func:`~mtl_lightning.data.table_files.read_table`: a UTF-16 byte-order mark means UTF-16;
otherwise the file is read as UTF-8 (a UTF-8 BOM is dropped) unless ``encoding`` names another
codec (``latin-1`` for a spreadsheet export). A file that is not valid in the codec used is a
:class:`TextEncodingError` naming the file, the line and the byte, never a bare
``UnicodeDecodeError``; for UTF-8 it suggests ``encoding: latin-1``.
"""

from __future__ import annotations

import codecs
from pathlib import Path

__all__ = ["TextEncodingError", "decode_text"]


class TextEncodingError(ValueError):
    """A text file that cannot be decoded with the encoding used."""


def decode_text(path: str | Path, encoding: str | None = None) -> str:
    """The text of ``path``; line ends are left as they are (CRLF is the reader's business).

    Args:
        path: The file.
        encoding: A Python codec name, or ``None`` for UTF-8 (UTF-16 if the file has its BOM).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TextEncodingError: A byte is invalid in the encoding; names the file, line and byte.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = f.write_bytes("a,b\\r\\nx,caf\\u00e9\\r\\n".encode("latin-1"))
        >>> decode_text(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mtl_lightning.data.encodings.TextEncodingError: .../t.csv: line 2 is not valid UTF-8 (byte 0xe9 at position 6 of the line); if the file is Latin-1 (e.g. a spreadsheet export), set encoding: latin-1
        >>> decode_text(f, encoding="latin-1").splitlines()
        ['a,b', 'x,café']
        >>> _ = f.write_bytes("a,b\\nx,é\\n".encode("utf-16")); decode_text(f).splitlines()
        ['a,b', 'x,é']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        codec = "utf-16"
    elif encoding is None or codecs.lookup(encoding).name == "utf-8":
        codec = "utf-8-sig"
    else:
        codec = encoding
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as error:
        before = raw[: error.start]
        line = before.count(b"\n") + 1
        column = error.start - (before.rfind(b"\n") + 1) + 1
        hint = (
            "; if the file is Latin-1 (e.g. a spreadsheet export), set encoding: latin-1"
            if codec == "utf-8-sig"
            else ""
        )
        name = "UTF-8" if codec == "utf-8-sig" else codec
        raise TextEncodingError(
            f"{path}: line {line} is not valid {name} (byte 0x{raw[error.start]:02x} at "
            f"position {column} of the line){hint}"
        ) from None
