"""Multipart form bodies (`multipart/form-data`, RFC 7578) for `POST /upload`: a fast path for the well-formed
body every client sends (curl, requests, browsers), werkzeug's parser for everything else.

werkzeug's parser is a streaming state machine (regular expressions over 64 KiB chunks, every part copied into a
spooled temporary file): it accepts every variant (bare LF line breaks, folded headers, preambles, bodies of
unknown length), at ~0.3 ms for the 80-line sample and ~45 ms for a 49 MiB upload. The fast path splits a body
of known length with `bytes.find`:

- a body up to `IN_MEMORY_BYTES` is read into memory and split there (the file part becomes a BytesIO);
- a larger body on a seekable stream (waitress keeps bodies over 512 KiB in a temporary file) is scanned for the
  boundary in blocks, and the file part is a read-only window onto that stream: the upload is not copied again.

It accepts only the strict form (CRLF line breaks, no preamble, headers without folding, every part delimited by
`CRLF--boundary` followed by CRLF or `--`, within the form limits). Anything else is handed to werkzeug's parser
unchanged (a small body from memory, a large one after seeking back), so an unusual or malformed body gets exactly
werkzeug's answer, and `MAX_FORM_PARTS` / `MAX_FORM_MEMORY_SIZE` are werkzeug's to enforce.
"""
from __future__ import annotations

import bisect
import io
from typing import IO

from flask import Request
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

IN_MEMORY_BYTES = 1 << 20    # bodies up to this size are parsed from memory
SCAN_BYTES = 1 << 20         # block size when a larger body is scanned for boundaries
MAX_HEADER_BYTES = 16 * 1024  # part headers longer than this go to werkzeug
# werkzeug checks MAX_FORM_MEMORY_SIZE against its unparsed buffer (up to one 64 KiB read plus a remainder) as
# well as against field values: below this limit a file part could trip it there, so such apps use werkzeug.
MIN_FORM_MEMORY_FOR_FAST_PATH = 256 * 1024
SAFE_CHARSETS = {"ascii", "us-ascii", "utf-8", "iso-8859-1"}  # werkzeug's list (MultiPartParser.get_part_charset)


class Fallback(Exception):
    """The body is not in the strict form: werkzeug parses it."""


class _Memory:
    """A body held in memory."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def find(self, sub: bytes, start: int) -> int:
        return self.data.find(sub, start)

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]

    def part(self, start: int, end: int) -> IO[bytes]:
        return io.BytesIO(self.data[start:end])


class _Seekable:
    """A body in a seekable stream from `base` on, `size` bytes; the delimiter's positions found by one scan."""

    def __init__(self, stream: IO[bytes], size: int, delimiter: bytes, max_marks: int):
        self.stream, self.base, self.size = stream, stream.tell(), size
        self.delimiter = delimiter
        self.marks = self._scan(max_marks)

    def _scan(self, max_marks: int) -> list[int]:
        stream, delimiter = self.stream, self.delimiter
        overlap = len(delimiter) - 1
        marks: list[int] = []
        offset, tail = 0, b""  # tail: the last `overlap` bytes of the previous block
        while offset < self.size:
            block = stream.read(min(SCAN_BYTES, self.size - offset))
            if not block:
                raise Fallback  # shorter than its Content-Length
            data = tail + block
            start = offset - len(tail)
            at = data.find(delimiter)
            while at >= 0:
                marks.append(start + at)
                if len(marks) > max_marks:
                    raise Fallback  # werkzeug raises its limit error
                at = data.find(delimiter, at + 1)
            offset += len(block)
            tail = data[-overlap:] if overlap else b""
        return marks

    def find(self, sub: bytes, start: int) -> int:
        if sub == self.delimiter:
            i = bisect.bisect_left(self.marks, start)
            return self.marks[i] if i < len(self.marks) else -1
        window = self.read(start, min(self.size, start + MAX_HEADER_BYTES))  # part headers: short
        at = window.find(sub)
        return start + at if at >= 0 else -1

    def read(self, start: int, end: int) -> bytes:
        self.stream.seek(self.base + start)
        return self.stream.read(end - start)

    def part(self, start: int, end: int) -> IO[bytes]:
        return PartReader(self.stream, self.base + start, self.base + end)


class PartReader(io.RawIOBase):
    """Read-only window [start, end) onto a seekable stream (the file part of a body waitress spooled to disk).
    Closing it leaves the stream open: the server owns it."""

    def __init__(self, stream: IO[bytes], start: int, end: int):
        super().__init__()
        self._stream, self._start, self._end, self._pos = stream, start, end, start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = min(max(self._start, base + offset), self._end)
        return self.tell()

    def read(self, size: int | None = -1) -> bytes:
        left = self._end - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        self._stream.seek(self._pos)
        data = self._stream.read(size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _part_headers(block: bytes) -> Headers:
    """Part headers as werkzeug would read them, or Fallback when they are not plain CRLF-separated lines."""
    if block.count(b"\r") != block.count(b"\r\n") or block.count(b"\n") != block.count(b"\r\n"):
        raise Fallback  # a bare CR or LF: werkzeug's line-break rules decide
    headers = []
    for line in block.split(b"\r\n"):
        if not line or line[:1] in (b" ", b"\t"):
            raise Fallback  # folded (continued) header, or an empty line
        try:
            name, _, value = line.decode().partition(":")
        except UnicodeDecodeError:
            raise Fallback from None
        headers.append((name.strip(" \t"), value.strip(" \t")))
    return Headers(headers)


def _charset(headers: Headers) -> str:
    content_type = headers.get("content-type")
    if content_type:
        charset = parse_options_header(content_type)[1].get("charset", "").lower()
        if charset in SAFE_CHARSETS:
            return charset
    return "utf-8"


def split_form(body, boundary: bytes, max_parts: int | None, max_field_bytes: int | None):
    """(fields, files) of a strict multipart body, as werkzeug's parser returns them; Fallback otherwise."""
    delimiter = b"--" + boundary
    if body.read(0, len(delimiter) + 2) != delimiter + b"\r\n":
        raise Fallback  # a preamble, an empty form, or whitespace after the boundary
    fields, files = [], []
    start = len(delimiter) + 2  # where the current part's headers begin
    while True:
        if max_parts is not None and len(fields) + len(files) >= max_parts:
            raise Fallback  # werkzeug answers 413
        headers_end = body.find(b"\r\n\r\n", start)
        if headers_end < 0 or headers_end - start > MAX_HEADER_BYTES:
            raise Fallback
        headers = _part_headers(body.read(start, headers_end))
        if "content-disposition" not in headers:
            raise Fallback
        _, extra = parse_options_header(headers["content-disposition"])
        data_start = headers_end + 4
        mark = body.find(delimiter, data_start)  # the first "--boundary" must be the part's end
        if mark < 2 or mark - 2 < data_start:
            raise Fallback
        after = body.read(mark - 2, mark + len(delimiter) + 2)
        if len(after) != len(delimiter) + 4 or after[:2] != b"\r\n" or after[-2:] not in (b"\r\n", b"--"):
            raise Fallback
        data_end = mark - 2
        name, filename = extra.get("name"), extra.get("filename")
        if filename is None:
            if max_field_bytes is not None and data_end - data_start > max_field_bytes:
                raise Fallback  # werkzeug answers 413
            fields.append((name, body.read(data_start, data_end).decode(_charset(headers), "replace")))
        else:
            files.append((name, FileStorage(body.part(data_start, data_end), filename, name, headers=headers)))
        if after[-2:] == b"--":
            return fields, files  # the closing delimiter (what follows it is an epilogue, ignored)
        start = mark + len(delimiter) + 2


class UploadFormParser(FormDataParser):
    """werkzeug's FormDataParser with the fast path for multipart bodies (see the module docstring).
    `raw_input`: the server's own input stream when it ends the body itself (`wsgi.input_terminated`, as waitress
    does) — werkzeug hands the parser that stream wrapped in a LimitedStream, which cannot seek."""

    raw_input = None

    def _parse_multipart(self, stream, mimetype, content_length, options):
        boundary = options.get("boundary", "")
        memory_limit = self.max_form_memory_size
        if (not boundary or content_length is None or content_length <= 0
                or (memory_limit is not None and memory_limit < MIN_FORM_MEMORY_FOR_FAST_PATH)):
            return super()._parse_multipart(stream, mimetype, content_length, options)
        boundary_bytes = boundary.encode("ascii")  # (UnicodeEncodeError is a ValueError, as in werkzeug)
        if content_length <= IN_MEMORY_BYTES:
            data = stream.read(content_length)
            try:
                if len(data) != content_length:
                    raise Fallback
                fields, files = split_form(_Memory(data), boundary_bytes, self.max_form_parts, memory_limit)
            except Fallback:
                return super()._parse_multipart(io.BytesIO(data), mimetype, content_length, options)
            return stream, self.cls(fields), self.cls(files)
        source = self.raw_input if self.raw_input is not None else stream
        try:
            seekable = source.seekable()
        except (AttributeError, ValueError):
            seekable = False
        if not seekable:
            return super()._parse_multipart(stream, mimetype, content_length, options)
        origin = source.tell()
        try:
            max_marks = (self.max_form_parts or 1000) + 1
            body = _Seekable(source, content_length, b"--" + boundary_bytes, max_marks)
            fields, files = split_form(body, boundary_bytes, self.max_form_parts, memory_limit)
        except Fallback:
            source.seek(origin)  # (nothing read through `stream` yet)
            return super()._parse_multipart(stream, mimetype, content_length, options)
        source.seek(origin + content_length)
        return stream, self.cls(fields), self.cls(files)


class UploadRequest(Request):
    """Flask's request with the upload service's multipart parser."""

    form_data_parser_class = UploadFormParser

    def make_form_data_parser(self) -> UploadFormParser:
        parser = super().make_form_data_parser()
        if "wsgi.input_terminated" in self.environ:  # the server ends the body at its Content-Length
            parser.raw_input = self.environ["wsgi.input"]
        return parser
