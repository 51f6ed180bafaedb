"""Paddle Serving's protocol (`GeneralModelService`), served over gRPC and HTTP on current grpcio/protobuf.

Layers, one module each: `protocol` (messages, decoding, encoding, error kinds), `model` (one model version:
contract, validation, predictor pool), `batching` (dynamic batching), `versions` (numbered versions, hot swap),
`service` (transport-independent request handling), `grpc_transport`, `http_transport`, `metrics`, `server`
(command line and lifecycle). Start it with `python -m serving.rpc --model <dir>/serving_server`.
"""
