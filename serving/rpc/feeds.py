"""Paddle Serving feeds -> the runtime's input arrays, for one model version.

Two request layouts are accepted, by name (`alias_name`, else `name`):
- packed, as this server's clients have always sent: one tensor per model input (`dense_input` FP32 [B, n_dense],
  `sparse_inputs` INT64 [B, sparse_width]);
- per field, as PaddleRec's Paddle Serving configs declare them: `dense_input` plus one INT64 feed per feature
  field (`C1`..`C26` for Criteo; shape [B, 1] for a single-valued field, [B, max_len] for a multi-valued one),
  packed here into `sparse_inputs` in the schema's column order.
Names in `serving_server_conf.prototxt` are accepted as well (a feed var's name and alias both name it). Shapes,
elem types and value counts are checked here with messages that name the feed; values (finite, ids inside the
embedding table) are checked by the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctrkit.runtime import LoadedModel, ModelContract
from ctrkit.serving_config import ServingConfigError, read_server_config

from serving.rpc import protocol as P
from serving.rpc.protocol import FeedTensor, InferenceRequest, RequestError

FETCH_ALIAS = "prob"
ELEM_OF_KIND = {"dense": P.FP32, "sparse": P.INT64}


def _describe(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass(frozen=True)
class _Feed:
    key: str          # canonical name: a model input name or a field name
    elem_type: int
    width: int
    target: str       # the model input it fills
    start: int = 0    # first column in that input (per-field feeds)


class FeedMap:
    """Feed names, types and widths of one version; packs a decoded request into the runtime's inputs."""

    def __init__(self, model: LoadedModel):
        contract: ModelContract = model.contract
        self.contract = contract
        self.packed = {spec.name: _Feed(spec.name, ELEM_OF_KIND[spec.kind], spec.width, spec.name)
                       for spec in contract.inputs}
        sparse = contract.input("sparse")
        self.sparse_name = sparse.name if sparse else None
        self.per_field = {f.name: _Feed(f.name, P.INT64, f.width, sparse.name, f.start) for f in contract.fields} \
            if sparse else {}
        self.field_names = [f.name for f in contract.fields]
        # a dense input of width 0 (a schema without numeric fields) has no feed in the configs: filled here
        self.implicit = [spec.name for spec in contract.inputs if spec.kind == "dense" and spec.width == 0]
        self.required_packed = [spec.name for spec in contract.inputs if spec.name not in self.implicit]
        self.fetch_name, self.fetch_alias = contract.output, FETCH_ALIAS
        self.aliases: dict[str, str] = {k: k for k in (*self.packed, *self.per_field)}
        try:
            config = read_server_config(model.path)
        except ServingConfigError:
            config = None
        if config is not None:
            for var in config.feed_var:
                canonical = next((k for k in (var.alias_name, var.name) if k in self.aliases), None)
                if canonical is not None:
                    for key in (var.name, var.alias_name):
                        if key:
                            self.aliases.setdefault(key, canonical)
            if len(config.fetch_var) == 1:
                self.fetch_name = config.fetch_var[0].name or self.fetch_name
                self.fetch_alias = config.fetch_var[0].alias_name or self.fetch_name
        self._fetch_keys = {self.fetch_alias, self.fetch_name}

    def fetch_names(self, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in self._fetch_keys]
        if unknown:
            raise RequestError(P.UNKNOWN_NAME, f"unknown fetch var '{unknown[0]}'; this model fetches "
                                               f"['{self.fetch_alias}']")
        return [self.fetch_alias]

    def _expected(self) -> str:
        dense = [n for n in self.required_packed if n != self.sparse_name]
        fields = (f"{self.field_names[0]}..{self.field_names[-1]}" if len(self.field_names) > 2
                  else ", ".join(self.field_names))
        return (f"{self.required_packed}, or {dense + ['<one feed per field: ' + fields + '>']}"
                if self.sparse_name else f"{self.required_packed}")

    def inputs(self, request: InferenceRequest, max_batch: int) -> tuple[dict, bool]:
        """({model input name: array}, per_field) for one request; RequestError when the feeds do not fit."""
        given: dict[str, FeedTensor] = {}
        for t in request.feeds:
            key = self.aliases.get(t.key)
            if key is None:
                raise RequestError(P.UNKNOWN_NAME, f"unknown feed '{t.key}'; this model's feeds are "
                                                   f"{self._expected()}")
            if key in given:
                raise RequestError(P.UNKNOWN_NAME, f"feed '{key}' is given twice")
            given[key] = t
        per_field = [k for k in given if k in self.per_field and k not in self.packed]
        if per_field and self.sparse_name in given:
            raise RequestError(P.UNKNOWN_NAME, f"feed '{self.sparse_name}' and per-field feeds ({per_field[0]}, "
                                               "...) are both given; send one or the other")
        wanted = [n for n in self.required_packed if n != self.sparse_name or not per_field]
        if per_field:
            wanted += self.field_names
        missing = [n for n in wanted if n not in given]
        if missing:
            raise RequestError(P.MISSING_FEED, f"missing feed(s) {missing if len(missing) < 8 else missing[:8] + ['...']}"
                                               f"; this model needs {self._expected()}")
        batches: dict[str, int] = {}
        arrays: dict[str, np.ndarray] = {}
        columns: dict[str, np.ndarray] = {}
        for key, t in given.items():
            feed = self.packed[key] if key in self.packed else self.per_field[key]
            values = self._check(feed, t, max_batch)
            batches[key] = len(values)
            if key in self.packed:
                arrays[key] = values
            else:
                columns[key] = values
        if len(set(batches.values())) != 1:
            shown = dict(list(batches.items())[:6])
            raise RequestError(P.WRONG_SHAPE, f"feeds disagree on the batch size: {shown}")
        batch = next(iter(batches.values()))
        for name in self.implicit:
            if name not in arrays:
                arrays[name] = np.zeros((batch, 0), dtype=np.float32)
        if per_field:
            sparse = np.empty((batch, self.contract.sparse_width), dtype=np.int64)
            for key, values in columns.items():
                feed = self.per_field[key]
                sparse[:, feed.start:feed.start + feed.width] = values
            arrays[self.sparse_name] = sparse
        return arrays, bool(per_field)

    def _check(self, feed: _Feed, t: FeedTensor, max_batch: int) -> np.ndarray:
        if t.has_lod:
            raise RequestError(P.WRONG_SHAPE, f"feed '{feed.key}' is not a LoD tensor; drop its lod")
        if t.elem_type != feed.elem_type:
            raise RequestError(P.WRONG_DTYPE, f"feed '{feed.key}' needs elem_type {feed.elem_type} "
                                              f"({P.ELEM_NAMES[feed.elem_type]}), got {t.elem_type} "
                                              f"({P.ELEM_NAMES.get(t.elem_type, 'unknown')})")
        shape = t.shape
        if len(shape) == 1 and feed.width == 1 and feed.key not in self.packed:
            shape = (shape[0], 1)  # a per-field id feed may come as [B]
        if len(shape) != 2 or shape[1] != feed.width:
            raise RequestError(P.WRONG_SHAPE, f"feed '{feed.key}' needs shape [B, {feed.width}] (batch first), "
                                              f"got {_describe(t.shape)}")
        batch = shape[0]
        if batch == 0:
            raise RequestError(P.EMPTY_BATCH, f"feed '{feed.key}' has an empty batch (shape {_describe(t.shape)})")
        if batch > max_batch:
            raise RequestError(P.TOO_LARGE, f"batch of {batch} exceeds this server's limit of {max_batch} samples "
                                            "per request")
        if t.values.size != batch * feed.width:
            raise RequestError(P.WRONG_SHAPE, f"feed '{feed.key}' has {t.values.size} values but shape "
                                              f"{_describe(t.shape)} needs {batch * feed.width}")
        return t.values.reshape(batch, feed.width)

    def field_at(self, column: int) -> str:
        """The per-field feed that fills `column` of the sparse input (for error messages)."""
        for f in self.contract.fields:
            if f.start <= column < f.start + f.width:
                return f.name
        return self.sparse_name or "?"
