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
import io
from pathlib import Path
from typing import TextIO

__all__ = ["TextEncodingError", "decode_text", "encoding_error", "open_text"]

_SCAN = 1 << 20  # bytes read at a time when looking for a bad byte


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
    codec = _codec(raw[:2], encoding)
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise encoding_error(path, codec) from None


def _codec(start: bytes, encoding: str | None) -> str:
    """The codec for a file starting with ``start``: UTF-16 by its BOM, else UTF-8 or ``encoding``."""
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if encoding is None or codecs.lookup(encoding).name == "utf-8":
        return "utf-8-sig"
    return encoding


def open_text(path: str | Path, encoding: str | None = None) -> tuple[TextIO, str]:
    """``(stream, codec)``: ``path`` opened for reading text a line at a time with
    :func:`decode_text`'s codec (line ends kept); a ``UnicodeDecodeError`` while reading is
    turned into its message by :func:`encoding_error`.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = f.write_bytes("a,b\\nx,é\\n".encode("utf-16"))
        >>> stream, codec = open_text(f); (list(stream), codec)
        (['a,b\\n', 'x,é\\n'], 'utf-16')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = open(path, "rb")  # noqa: SIM115 - closed with the text stream
    codec = _codec(raw.read(2), encoding)
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding=codec, newline=""), codec


def encoding_error(path: str | Path, codec: str) -> TextEncodingError:
    """The error naming the first byte of ``path`` invalid in ``codec``: its line, its position
    in the line and its value (the file is read in pieces, never whole)."""
    decoder = codecs.getincrementaldecoder(codec)()
    offset, newlines, line_start, tail = 0, 0, 0, b""
    with open(path, "rb") as f:
        while piece := f.read(_SCAN):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(piece)
            except UnicodeDecodeError as error:
                at = offset - pending + error.start  # in the file
                before = piece[: max(at - offset, 0)]
                line = newlines + before.count(b"\n") + 1
                if b"\n" in before:
                    line_start = offset + before.rfind(b"\n") + 1
                value = piece[at - offset] if at >= offset else tail[at - offset]
                return _error(path, codec, line, at - line_start + 1, value)
            newlines += piece.count(b"\n")
            if b"\n" in piece:
                line_start = offset + piece.rfind(b"\n") + 1
            offset, tail = offset + len(piece), piece[-8:]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:  # the file ends inside a character
            at = offset - len(error.object) + error.start
            return _error(path, codec, newlines + 1, at - line_start + 1, tail[at - offset])
    raise ValueError(f"{path}: no byte is invalid in {codec}")


def _error(path: str | Path, codec: str, line: int, column: int, value: int) -> TextEncodingError:
    hint = (
        "; if the file is Latin-1 (e.g. a spreadsheet export), set encoding: latin-1"
        if codec == "utf-8-sig"
        else ""
    )
    name = "UTF-8" if codec == "utf-8-sig" else codec
    return TextEncodingError(
        f"{path}: line {line} is not valid {name} (byte 0x{value:02x} at position {column} of "
        f"the line){hint}"
    )
