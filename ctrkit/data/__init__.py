"""The data layer: the one place where text lines become model inputs (see docs/data.md).

Every entry point takes a `FeatureSpec` (Criteo) or a `ctrkit.schema.FeatureSchema` (any declared schema: CSV /
TSV with a header or columns, slot format with any slot names; `ctrkit.data.generic`). Both Criteo formats
(PaddleRec slot format and raw tab-separated) parse into the same `Batch`; the format of each file is detected
from its lines and locked for the file (`FileParser` does the same for callers that read a file chunk by chunk). `iter_batches` streams files and directories; `hash_categorical` is the
process-independent raw-value -> id hash; `ctrkit.data.synthetic` makes Criteo-like data with a known truth;
`ctrkit.data.paddle_dataset` wraps the stream for `paddle.io.DataLoader` (it imports paddle, so it is not
imported here).
"""
from ctrkit.data.hashing import hash_categorical
from ctrkit.data.parsing import (Batch, DataFormatError, FileParser, Layout, ParseResult, detect_layout,
                                 parse_lines)
from ctrkit.data.reader import BatchStream, iter_batches, list_data_files
from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS, FeatureSpec
from ctrkit.data.writer import convert_to_slot, format_slot_lines

__all__ = ["Batch", "BatchStream", "DataFormatError", "FeatureSpec", "FileParser", "Layout", "NUM_DENSE", "NUM_SLOTS",
           "ParseResult", "convert_to_slot", "detect_layout", "format_slot_lines", "hash_categorical",
           "iter_batches", "list_data_files", "parse_lines"]
