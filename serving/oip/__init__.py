"""The Open Inference Protocol (KServe v2) front-end: HTTP/REST and gRPC on the protocol-free model runtime."""
