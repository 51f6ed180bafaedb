"""Load the model once, build the app and serve it with waitress until SIGTERM or SIGINT.

Waitress answers some requests itself, before the app sees them (a body over the size limit, a malformed
request); `JsonErrorTask` makes those answers JSON too, so a client never has to parse anything else.
"""
from __future__ import annotations

import json
import logging
import os
import signal

import waitress
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from ctrkit.inference import PredictorOptions, PredictorPool, load_exported_model
from serving.upload.app import create_app
from serving.upload.scoring import Scorer
from serving.upload.settings import MIB, UploadSettings
from serving.upload.store import ResultStore, redact_url

log = logging.getLogger(__name__)


class JsonErrorTask(ErrorTask):
    """waitress's own error answers (413, 400, 431, ...) as `{"code", "msg"}` JSON."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            limit = (self.channel.server.adj.max_request_body_size - 1) / MIB
            msg = f"upload too large: the limit is {limit:g} MiB"
        else:
            msg = f"{error.reason}: {error.body}"
        body = json.dumps({"code": error.code, "msg": msg}, separators=(",", ":")).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def build_app(settings: UploadSettings):
    """Load the exported model, build the predictor pool (checked against the golden batch) and the app."""
    exported = load_exported_model(settings.model)
    options = PredictorOptions(device=settings.device, gpu_id=settings.gpu_id, onednn=settings.use_onednn,
                               cpu_threads=settings.cpu_threads)
    pool = PredictorPool(exported, options, settings.workers)
    scorer = Scorer(pool, exported.feature_spec, settings.batch_size)
    store = ResultStore(settings.redis_url, exported.name, settings.redis_ttl)
    log.info("model %s from %s: %d predictor(s) [%s]; redis %s; uploads up to %g MiB, save=true keeps them in %s",
             exported.name, settings.model, settings.workers, options.describe(),
             redact_url(settings.redis_url) if settings.redis_url else "disabled", settings.max_upload_mb,
             os.path.abspath(settings.upload_dir))
    return create_app(scorer, store, model_name=exported.name, upload_dir=settings.upload_dir,
                      max_upload_bytes=settings.max_upload_bytes)


def _stop(signum, frame):
    raise KeyboardInterrupt  # waitress's loop turns this into a clean shutdown


def serve(app, settings: UploadSettings) -> None:
    """Serve until SIGTERM/SIGINT; requests in flight get a few seconds to finish."""
    socket_map: dict = {}
    server = waitress.create_server(
        app, map=socket_map, host=settings.host, port=settings.port, threads=settings.threads,
        # waitress rejects a body at or over this size from its Content-Length, before reading it.
        max_request_body_size=settings.max_upload_bytes + 1, ident="ctrkit-upload")
    for dispatcher in socket_map.values():
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = JsonErrorChannel
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    for host, port in listening:  # several when the host name resolves to several addresses
        log.info("serving on http://%s:%s", host, port)
    server.run()
    log.info("stopped")
