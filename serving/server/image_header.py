"""Reads the size of an encoded JPEG or PNG frame from its header, without decoding.

The server checks every frame of a request with this before the request
joins a batch: a frame that is not a complete JPEG/PNG, or that would decode
to more pixels than the server allows, is refused on its own, naming the
instance and the frame, instead of failing inside the graph for the whole
merged batch (and costing the memory of decoding it first).

Only the structure is checked (markers, chunk lengths and PNG CRCs, the end
marker): a complete file whose compressed data is damaged still reaches the
decoder, and the batcher isolates it.
"""

from __future__ import annotations

import struct
import zlib

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_START = b"\xff\xd8"
# Start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_START_OF_SCAN = 0xDA
_JPEG_END_OF_IMAGE = 0xD9
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, 0xD8, *range(0xD0, 0xD8)])


class ImageHeaderError(ValueError):
    """The bytes are not a complete JPEG or PNG image; the message says why."""


def image_size(data: bytes) -> tuple[int, int]:
    """`(height, width)` of an encoded JPEG or PNG image.

    Raises:
        ImageHeaderError: for bytes that are neither, or a truncated or
            malformed file.
    """
    if data.startswith(_JPEG_START):
        return _jpeg_size(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_size(data)
    raise ImageHeaderError(f"not a JPEG or PNG image (it starts with {bytes(data[:8])!r})")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    size = None
    position = 2
    while True:
        if position >= len(data) or data[position] != 0xFF:
            raise ImageHeaderError(f"malformed or truncated JPEG: no marker at byte {position}")
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            raise ImageHeaderError("truncated JPEG: it ends inside a marker")
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker == _JPEG_END_OF_IMAGE:
            raise ImageHeaderError("malformed JPEG: it ends before any image data")
        if position + 2 > len(data):
            raise ImageHeaderError("truncated JPEG: it ends inside a segment header")
        (length,) = struct.unpack_from(">H", data, position)
        if length < 2 or position + length > len(data):
            raise ImageHeaderError("truncated JPEG: a segment runs past the end of the data")
        if marker in _JPEG_FRAME_MARKERS:
            if length < 7:
                raise ImageHeaderError("malformed JPEG: frame header too short")
            height, width = struct.unpack_from(">HH", data, position + 3)
            size = (height, width)
        if marker == _JPEG_START_OF_SCAN:
            if size is None:
                raise ImageHeaderError("malformed JPEG: image data before the frame header")
            # The end-of-image marker closes the entropy-coded data; a file cut
            # short (an interrupted upload or copy) has none.
            if data.rfind(b"\xff\xd9", position + length) < 0:
                raise ImageHeaderError("truncated JPEG: no end-of-image marker")
            break
        position += length
    if size[0] == 0 or size[1] == 0:
        raise ImageHeaderError(f"malformed JPEG: frame size {size[0]}x{size[1]}")
    return size


def _png_size(data: bytes) -> tuple[int, int]:
    view = memoryview(data)  # CRCs over slices without copying the chunks
    position = len(_PNG_SIGNATURE)
    size = None
    while True:
        if position + 8 > len(data):
            raise ImageHeaderError("truncated PNG: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length + 4
        if end > len(data):
            raise ImageHeaderError(f"truncated PNG: chunk {kind!r} runs past the end of the data")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[position + 4 : end - 4]) != crc:
            raise ImageHeaderError(f"corrupt PNG: CRC mismatch in chunk {kind!r}")
        if size is None:
            if kind != b"IHDR" or length < 8:
                raise ImageHeaderError("malformed PNG: it does not start with an IHDR chunk")
            width, height = struct.unpack_from(">II", data, position + 8)
            size = (height, width)
        if kind == b"IEND":
            break
        position = end
    if size[0] == 0 or size[1] == 0:
        raise ImageHeaderError(f"malformed PNG: image size {size[0]}x{size[1]}")
    return size
