"""The Flask app: `POST /upload`, `GET /result/<user_id>`, `GET /health`, `GET /ready`, `GET /versions`,
`GET /metrics`, and `GET /` (a small page for people: pick a file, see the ranking and a histogram).

Every API answer is JSON (`application/json`; `/metrics` is Prometheus text, `/` HTML); errors are
`{"code": <HTTP status>, "msg": "..."}` with the same status, and no traceback ever reaches a client (unexpected
errors are logged and answered with 500).
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

from flask import Flask, Request, Response, g, jsonify, request
from prometheus_client import Counter, Histogram
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ctrkit.runtime import ModelRuntime, NotReadyError
from serving.upload.multipart import UploadRequest
from serving.upload.saving import UploadSaver
from serving.upload.scoring import AllPredictions, RawJSON, Scorer, TopK, UploadInputError
from serving.upload.settings import MIB, parse_bool
from serving.upload.store import ResultStore, StoreUnavailable

log = logging.getLogger(__name__)

USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOP_K = re.compile(r"[0-9]{1,5}")  # ASCII digits only ("²" is a digit to str.isdigit, not to int())
MAX_TOP_K = 10000
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
UPLOAD_PARAMS = ("user_id", "full", "re_model", "save", "debug", "top_k")
RESULT_PARAMS = ("top_k",)
FILE_FIELD = "file"


class BadParameter(ValueError):
    """A request parameter is missing or invalid; answered with 400."""


@dataclass(frozen=True)
class UploadParams:
    user_id: str
    full: bool = False
    re_model: str = "json"
    save: bool = False
    debug: bool = False
    top_k: int = 10


def _single_values(req: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Parameters from the query string and the form together; unknown or repeated names are errors."""
    names = set(req.args) | set(req.form)
    unknown = sorted(names - set(allowed))
    if unknown:
        raise BadParameter(f"unknown parameter(s) {unknown}; accepted: {list(allowed)}")
    values = {}
    for name in names:
        given = req.args.getlist(name) + req.form.getlist(name)
        if len(given) > 1:
            raise BadParameter(f"parameter {name!r} given more than once")
        values[name] = given[0]
    return values


def _user_id(text: str | None) -> str:
    if not text:
        raise BadParameter("missing parameter 'user_id'")
    if not USER_ID.fullmatch(text):
        raise BadParameter("user_id must be 1-64 letters, digits, '_' or '-'")
    return text


def _top_k(text: str | None) -> int:
    if text is None:
        return UploadParams.top_k
    if not TOP_K.fullmatch(text) or not 1 <= int(text) <= MAX_TOP_K:
        raise BadParameter(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {text!r}")
    return int(text)


def _flag(values: dict[str, str], name: str) -> bool:
    if name not in values:
        return False
    try:
        return parse_bool(values[name])
    except ValueError as exc:
        raise BadParameter(f"parameter {name!r}: {exc}") from None


def parse_upload_params(req: Request) -> UploadParams:
    values = _single_values(req, UPLOAD_PARAMS)
    re_model = values.get("re_model", "json")
    if re_model not in ("json", "redis"):
        raise BadParameter(f"re_model must be 'json' or 'redis', got {re_model!r}")
    return UploadParams(user_id=_user_id(values.get("user_id")), full=_flag(values, "full"), re_model=re_model,
                        save=_flag(values, "save"), debug=_flag(values, "debug"), top_k=_top_k(values.get("top_k")))


def uploaded_file(req: Request):
    extra = sorted(set(req.files) - {FILE_FIELD})
    if extra:
        raise BadParameter(f"unknown file field(s) {extra}; send the data as the multipart field '{FILE_FIELD}'")
    files = req.files.getlist(FILE_FIELD)
    if not files:
        raise BadParameter(f"missing file: send the data as the multipart form field '{FILE_FIELD}'")
    if len(files) > 1:
        raise BadParameter(f"send exactly one file in the field '{FILE_FIELD}', got {len(files)}")
    return files[0]


def json_response(answer: dict) -> Response:
    """`answer` as a compact JSON body; values that are RawJSON go in as they are."""
    if not any(isinstance(value, RawJSON) for value in answer.values()):
        return Response(json.dumps(answer, separators=(",", ":")) + "\n", content_type="application/json")

    def encode(value) -> str:
        return value if isinstance(value, RawJSON) else json.dumps(value, separators=(",", ":"))

    body = ",".join(f"{json.dumps(key)}:{encode(value)}" for key, value in answer.items())
    return Response("{" + body + "}\n", content_type="application/json")


def error(status: int, msg: str):
    log.info("%s %s -> %d: %s", request.method, request.path, status, msg)
    response = jsonify(code=status, msg=msg)
    response.status_code = status
    return response


class UploadMetrics:
    """The front-end's own metrics, in the runtime's registry (so /metrics shows both)."""

    def __init__(self, registry):
        self.requests = Counter("ctrkit_upload_http_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=registry)
        self.latency = Histogram("ctrkit_upload_http_request_seconds", "HTTP request time by route", ["route"],
                                 buckets=(.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
                                 registry=registry)
        self.lines = Counter("ctrkit_upload_lines", "Lines scored (uploads answered 200)", registry=registry)


def create_app(runtime: ModelRuntime, scorer: Scorer, store: ResultStore, *, upload_dir: str,
               max_upload_bytes: int, draining: threading.Event | None = None) -> Flask:
    """`draining` (set on SIGTERM): /ready answers 503 (the server closes connections after each answer), while
    requests already begun are still served."""
    draining = draining or threading.Event()
    app = Flask(__name__)
    app.request_class = UploadRequest  # multipart bodies: a fast path for the common form (multipart.py)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.json.sort_keys = False
    app.json.compact = True
    metrics = UploadMetrics(runtime.metrics.registry)
    with open(PAGE, "rb") as f:
        page = f.read()

    @app.before_request
    def started():
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Response):
        route = request.url_rule.rule if request.url_rule is not None else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(BadParameter)
    @app.errorhandler(UploadInputError)
    def bad_request(exc: ValueError):
        return error(400, str(exc))

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable):
        return error(503, str(exc))

    @app.errorhandler(NotReadyError)
    def not_ready(exc: NotReadyError):
        return error(503, f"no model is being served: {exc}")

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        if (request.content_length or 0) > max_upload_bytes:
            return error(413, f"upload too large: the limit is {max_upload_bytes / MIB:g} MiB")
        return error(413, f"form too large: at most {app.config['MAX_FORM_PARTS']} parts, and "
                          f"{app.config['MAX_FORM_MEMORY_SIZE']} bytes in fields other than the file")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal server error (details are in the server log)")

    @app.get("/")
    def index():
        return Response(page, content_type="text/html; charset=utf-8")

    @app.get("/health")
    def health():
        return jsonify(code=200, status="ok")

    @app.get("/ready")
    def ready():
        """200 only while a golden-checked model version is loaded and the worker is not draining."""
        status = runtime.status()
        current = runtime.current
        answer = {"model": current.exported.name if current else None, "version": status.get("serving"),
                  "backend": status["backend"], "redis": store.status(), "pid": os.getpid()}
        if draining.is_set() or not runtime.ready:
            response = jsonify(code=503, status="draining" if draining.is_set() or runtime.draining else "not ready",
                               **answer)
            response.status_code = 503
            return response
        return jsonify(code=200, status="ready", **answer)

    @app.get("/versions")
    def versions():
        return jsonify(code=200, **runtime.status())

    @app.get("/metrics")
    def prometheus():
        return Response(runtime.metrics.render(), content_type=runtime.metrics.content_type)

    @app.post("/upload")
    def upload():
        started = time.perf_counter()
        req = request._get_current_object()  # (the request itself, not the context-local proxy, for its ~25 uses)
        params = parse_upload_params(req)
        file = uploaded_file(req)
        writers = []

        def sink_for(model_name: str):
            if params.re_model == "redis":
                writers.append(store.writer(params.user_id, model_name))
                return writers[-1]
            return AllPredictions() if params.full else TopK(params.top_k)

        if params.re_model == "redis":
            store.check_enabled()  # 503 before reading the file
        saver = UploadSaver(upload_dir) if params.save else None
        saved_as = None
        try:
            count, timings, sink = scorer.score(file.stream, sink_for, tee=saver.write if saver else None)
            if writers:
                commit_start = time.perf_counter()
                writers[0].commit()
                timings.store_ms += (time.perf_counter() - commit_start) * 1e3
            if saver:
                saved_as = saver.commit()
        except BaseException:
            for writer in writers:
                writer.discard()
            if saver:
                saver.discard()
            raise
        answer = {"code": 200, "user_id": params.user_id, "count": count, **sink.answer()}
        if saved_as:
            answer["saved_as"] = saved_as
        total_ms = (time.perf_counter() - started) * 1e3
        if params.debug:
            answer["debug"] = timings.as_dict(total_ms)
        metrics.lines.inc(count)
        response = json_response(answer)
        response.headers["X-Model-Version"] = str(timings.version)
        # the log line once the answer is on its way (the server closes the body after writing it)
        response.call_on_close(lambda: log.info("upload user=%s lines=%d re_model=%s full=%s version=%s %.1f ms",
                                                params.user_id, count, params.re_model, params.full,
                                                timings.version, total_ms))
        return response

    @app.get("/result/<user_id>")
    def result(user_id: str):
        values = _single_values(request, RESULT_PARAMS)
        user_id, top_k = _user_id(user_id), _top_k(values.get("top_k"))
        ranking = store.ranking(user_id, top_k)
        if ranking is None:
            return error(404, f"no stored ranking for user {user_id!r} under {store.key(user_id)!r} "
                              "(never uploaded with re_model=redis, or expired)")
        count, lines, scores = ranking
        return jsonify(code=200, user_id=user_id, key=store.key(user_id), count=count, index=lines,
                       data=[[s] for s in scores])

    return app
