#!/usr/bin/env python3
"""Makes one raw unary gRPC call with grpcio (the library the OTLP gRPC exporter uses) and
prints how it ended, so tests/e2e/otlp_errors.rs can check status codes on the wire:

    python otlp_grpc_call.py --target 127.0.0.1:PORT --body-file F [--method PATH]
                             [--gzip] [--header k=v]...

The body file holds the serialized request message (sent as is, or gzip-compressed by grpcio
with --gzip). Prints one JSON line: {"code": "OK"|"INVALID_ARGUMENT"|..., "details": str,
"retry_delay_s": int|null, "response_len": int|null}. `retry_delay_s` comes from a
google.rpc.RetryInfo in the grpc-status-details-bin trailer.
"""

import argparse
import json

import grpc
# googleapis-common-protos, a dependency of the SDK's gRPC exporter.
from google.rpc import error_details_pb2, status_pb2

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def retry_delay(err):
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.type_url.endswith("/google.rpc.RetryInfo"):
                return error_details_pb2.RetryInfo.FromString(detail.value).retry_delay.seconds
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--method", default=EXPORT)
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--header", action="append", default=[])
    args = p.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    metadata = []
    for h in args.header:
        k, _, v = h.partition("=")
        metadata.append((k.lower(), v))
    with grpc.insecure_channel(args.target) as channel:
        call = channel.unary_unary(
            args.method,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            response = call(
                body,
                metadata=metadata,
                timeout=20,
                compression=grpc.Compression.Gzip if args.gzip else grpc.Compression.NoCompression,
            )
            out = {"code": "OK", "details": "", "retry_delay_s": None, "response_len": len(response)}
        except grpc.RpcError as err:
            out = {
                "code": err.code().name,
                "details": err.details() or "",
                "retry_delay_s": retry_delay(err),
                "response_len": None,
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
