"""The upload service's multipart parser (serving/upload/multipart.py) gives exactly werkzeug's result for every
body: the strict bodies its fast path takes (in memory and, over 1 MiB, from a seekable file) and the unusual or
malformed ones it hands to werkzeug."""
from __future__ import annotations

import io
import tempfile

import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from serving.upload import multipart
from serving.upload.multipart import UploadFormParser

B = "----b0undary42"
LIMITS = {"max_form_memory_size": 500_000, "max_form_parts": 1000}


def part(name: str, data: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{B}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode() + data + b"\r\n"


def form(*parts: bytes, end: bytes = f"--{B}--\r\n".encode()) -> bytes:
    return b"".join(parts) + end


LINES = b"".join(b"1 click:0 dense_feature:0.1 1:%d 2:%d\n" % (i, i * 7) for i in range(100))


def bodies(LINES: bytes = LINES) -> dict[str, bytes]:  # noqa: N803 (the module's LINES, or more of them)
    return {
        "requests style": form(part("file", LINES, "data.txt")),
        "curl style, fields after the file": form(part("file", LINES, "d.txt", "Content-Type: text/plain\r\n"),
                                                  part("user_id", b"11"), part("top_k", b"5")),
        "fields first": form(part("user_id", b"u-1"), part("full", b"true"), part("file", LINES, "x")),
        "no epilogue newline": form(part("file", LINES, "d"), end=f"--{B}--".encode()),
        "an epilogue": form(part("file", LINES, "d"), end=f"--{B}--\r\nignored trailer\r\n".encode()),
        "empty file": form(part("file", b"", "empty.txt")),
        "empty filename": form(part("file", LINES, "")),
        "latin-1 field": form(part("user_id", "é".encode("latin-1"),
                                   extra="Content-Type: text/plain; charset=iso-8859-1\r\n")),
        "bad utf-8 field": form(part("user_id", b"\xff\xfe")),
        "utf-8 file name": form(part("file", LINES, "données.txt")),
        "boundary inside the data, not at a line start": form(part("file", LINES + f"x--{B}\r\n".encode() + LINES,
                                                                    "d")),
        "boundary-like line inside the data": form(part("file", LINES + f"\r\n--{B}x\r\n".encode() + LINES, "d")),
        "bare LF before a boundary in the data": form(part("file", LINES + f"\n--{B}\r\nmore".encode(), "d")),
        "LF-only line breaks": form(part("file", LINES, "d")).replace(b"\r\n", b"\n"),
        "a preamble": b"preamble text\r\n" + form(part("file", LINES, "d")),
        "folded header": form(part("file", LINES, "d", "Content-Type: text/plain;\r\n charset=utf-8\r\n")),
        "whitespace after a boundary": form(part("file", LINES, "d")).replace(f"--{B}\r\n".encode(),
                                                                              f"--{B}  \r\n".encode(), 1),
        "no content-disposition": (f"--{B}\r\nContent-Type: text/plain\r\n\r\n".encode() + LINES
                                   + f"\r\n--{B}--\r\n".encode()),
        "truncated": form(part("file", LINES, "d"))[:-30],
        "no closing boundary": b"".join([part("file", LINES, "d")]),
        "empty form": f"--{B}--\r\n".encode(),
        "not multipart at all": LINES,
    }


BODIES = bodies()


def parse(parser_class, body: bytes, stream=None, **limits):
    limits = {**LIMITS, **limits}
    parser = parser_class(cls=MultiDict, **limits)
    stream = io.BytesIO(body) if stream is None else stream
    try:
        _, fields, files = parser.parse(stream, "multipart/form-data", len(body), {"boundary": B})
    except RequestEntityTooLarge:
        return "413"
    return (list(fields.items(multi=True)),
            [(name, f.filename, f.name, list(f.headers.items()), f.stream.read())
             for name, f in files.items(multi=True)])


@pytest.mark.parametrize("case", list(BODIES))
def test_same_result_as_werkzeug_in_memory(case):
    body = BODIES[case]
    assert parse(UploadFormParser, body) == parse(FormDataParser, body)


# what the fast path takes itself; werkzeug parses the rest (the boundary text inside a part's data too: with a
# random boundary that never happens by chance, and werkzeug's rules for it are its own)
STRICT = {"requests style", "curl style, fields after the file", "fields first", "no epilogue newline", "an epilogue",
          "empty file", "empty filename", "latin-1 field", "bad utf-8 field", "utf-8 file name"}


@pytest.mark.parametrize("large", [False, True])
def test_the_fast_path_takes_strict_bodies_and_only_those(monkeypatch, large):
    handed_over = []
    original = FormDataParser._parse_multipart

    def werkzeug(self, stream, *args):
        handed_over.append(stream)
        return original(self, stream, *args)

    monkeypatch.setattr(FormDataParser, "_parse_multipart", werkzeug)
    for case, body in bodies(LINES * (400 if large else 1)).items():
        if large and len(body) <= multipart.IN_MEMORY_BYTES:
            continue
        handed_over.clear()
        with tempfile.TemporaryFile() as f:
            f.write(body)
            f.seek(0)
            parse(UploadFormParser, body, stream=f)
        assert bool(handed_over) == (case not in STRICT), case


@pytest.mark.parametrize("case", ["requests style", "curl style, fields after the file", "fields first",
                                  "boundary-like line inside the data", "LF-only line breaks", "truncated",
                                  "a preamble"])
def test_same_result_as_werkzeug_for_a_large_body_in_a_file(case):
    """Over 1 MiB (waitress keeps such bodies in a temporary file): the file part is a window onto the file."""
    body = bodies(LINES * 400)[case]  # ~1.9 MiB of lines
    assert len(body) > multipart.IN_MEMORY_BYTES
    with tempfile.TemporaryFile() as f:
        f.write(body)
        f.seek(0)
        ours = parse(UploadFormParser, body, stream=f)
    assert ours == parse(FormDataParser, body)


def test_boundary_split_across_scan_blocks(monkeypatch):
    """The delimiter may straddle two blocks of the boundary scan."""
    body = form(part("file", LINES * 400, "d"), part("user_id", b"7"))
    for cut in range(len(LINES) * 400 + 150, len(LINES) * 400 + 200):
        monkeypatch.setattr(multipart, "SCAN_BYTES", cut)
        with tempfile.TemporaryFile() as f:
            f.write(body)
            f.seek(0)
            fields, files = parse(UploadFormParser, body, stream=f)
        assert fields == [("user_id", "7")] and files[0][-1] == LINES * 400


def test_the_file_part_of_a_large_body_is_not_copied():
    body = form(part("user_id", b"9"), part("file", LINES * 400, "d"))
    with tempfile.TemporaryFile() as f:
        f.write(body)
        f.seek(0)
        _, fields, files = UploadFormParser(cls=MultiDict, **LIMITS).parse(f, "multipart/form-data", len(body),
                                                                          {"boundary": B})
        stream = files["file"].stream
        assert isinstance(stream, multipart.PartReader) and fields["user_id"] == "9"
        blocks = iter(lambda: stream.read(1 << 16), b"")
        assert b"".join(blocks) == LINES * 400
        stream.seek(5)
        assert stream.read(10) == (LINES * 400)[5:15] and stream.tell() == 15
        files["file"].close()
        assert not f.closed  # the server's body file is the server's to close


@pytest.mark.parametrize("large", [False, True])
def test_form_limits_are_werkzeugs(large):
    lines = LINES * (400 if large else 1)
    many = form(*[part(f"f{i}", b"x") for i in range(5)], part("file", lines, "d"))
    big_field = form(part("user_id", b"x" * 300_000), part("file", lines, "d"))
    for body, limits in ((many, {"max_form_parts": 3}), (big_field, {"max_form_memory_size": 260_000})):
        stream = io.BytesIO(body)
        assert parse(UploadFormParser, body, stream=stream, **limits) == "413"
        assert parse(FormDataParser, body, **limits) == "413"


def test_the_app_reads_a_large_upload_in_place():
    """Through Flask (with MAX_CONTENT_LENGTH set, werkzeug wraps the input in a LimitedStream that cannot seek): a
    server that ends the body itself (wsgi.input_terminated, as waitress does) lets the parser use its seekable
    input, so the file part is a window onto it; without that flag werkzeug's parser reads it."""
    from flask import Flask, request

    from serving.upload.multipart import UploadRequest

    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = 64 << 20

    @app.post("/upload")
    def upload():
        stream = request.files["file"].stream
        return {"stream": type(stream).__name__, "bytes": len(stream.read()), "user_id": request.form["user_id"]}

    body = form(part("file", LINES * 400, "d"), part("user_id", b"7"))
    for terminated, expected in ((True, "PartReader"), (False, "SpooledTemporaryFile")):
        with tempfile.TemporaryFile() as f:
            f.write(body)
            f.seek(0)
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/upload", "SERVER_NAME": "x", "SERVER_PORT": "1",
                       "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": f,
                       "CONTENT_TYPE": f"multipart/form-data; boundary={B}", "CONTENT_LENGTH": str(len(body))}
            if terminated:
                environ["wsgi.input_terminated"] = True
            with app.request_context(environ):
                answer = app.full_dispatch_request().get_json()
        assert answer == {"stream": expected, "bytes": len(LINES) * 400, "user_id": "7"}
