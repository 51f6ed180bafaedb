"""Servers over exported models: `serving.rpc` (Paddle Serving protocol, gRPC + HTTP) and `serving.upload`
(HTTP file upload). Both load models through `ctrkit.inference` and never import training code."""
