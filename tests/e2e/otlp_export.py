#!/usr/bin/env python3
"""Exports a fixed set of metrics once with the official OpenTelemetry Python SDK.

Run by tests/e2e/otlp.rs with the interpreter of the virtualenv that .ci/run builds
($TRACEO_PYTHON):

    python otlp_export.py --transport grpc|http --endpoint URL --tenant T [--gzip] [--header k=v]...
        [--ca CA.pem [--cert CERT.pem --key KEY.pem]]

`--endpoint` is `http://127.0.0.1:PORT` for gRPC and the full `http://127.0.0.1:PORT/v1/metrics`
for OTLP/HTTP (protobuf); with `--ca` it is `https://...` and the exporter checks the server
against that CA (and presents the client certificate `--cert`/`--key` when given). The tenant rides in `X-Scope-OrgID`. The values are deterministic so
the test can check every point downstream:

- Counter `shop.orders` {order}, method=card: 3 + 4 (cumulative 7)
- UpDownCounter `queue.depth` {item}: +10 - 3 (7)
- Gauge `cpu.temperature` Cel: 41.5
- Histogram `http.server.duration` ms, explicit buckets [10, 100, 1000]: 5, 50, 50, 500, 5000
- Histogram `payload.size` By, exponential buckets (SDK defaults): 1, 2, 4, 1024

Temporality is the SDK default (cumulative). The reader never exports on a timer
(`export_interval_millis=inf`): the one export is `force_flush()`, and `shutdown()` exports
nothing more, so each series arrives exactly once. The SDK only logs a failed export, so the
exporter is wrapped to record every result; the script exits 1 unless exactly one export
happened and it succeeded, and prints one JSON line saying what it sent.
"""

import argparse
import json
import math
import sys
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource

RESOURCE = {
    "service.name": "checkout",
    "service.namespace": "shop",
    "service.instance.id": "pod-1",
    "deployment.environment": "prod",
}

# Per OTLP exporter spec: a bounded wait, then a failure the script reports.
EXPORT_TIMEOUT_S = 10


class RecordingExporter(MetricExporter):
    """Delegates to the real exporter and remembers what each `export()` returned."""

    def __init__(self, inner):
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.results = []
        self.data_points = 0
        self.metrics = []

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    self.metrics.append(m.name)
                    self.data_points += len(m.data.data_points)
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as e:  # the reader would only log it
            self.results.append(f"exception: {e!r}")
            raise
        self.results.append(result.name)
        return result

    def force_flush(self, timeout_millis=10_000):
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis=30_000, **kwargs):
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transport", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--gzip", action="store_true", help="compress requests with gzip")
    p.add_argument("--ca", help="CA bundle (PEM) the server's certificate must chain to: TLS")
    p.add_argument("--cert", help="client certificate (PEM), with --key: mTLS")
    p.add_argument("--key", help="client certificate's private key (PEM)")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="an extra request header (repeatable)",
    )
    args = p.parse_args()
    headers = {"X-Scope-OrgID": args.tenant}
    for h in args.header:
        k, sep, v = h.partition("=")
        if not sep or not k:
            p.error(f"--header {h!r}: expected K=V")
        headers[k] = v
    return args, headers


def make_exporter(args, headers):
    if args.transport == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        tls = {}
        if args.ca:

            def read(path):
                with open(path, "rb") as f:
                    return f.read()

            tls["credentials"] = grpc.ssl_channel_credentials(
                root_certificates=read(args.ca),
                private_key=read(args.key) if args.key else None,
                certificate_chain=read(args.cert) if args.cert else None,
            )
        return OTLPMetricExporter(
            endpoint=args.endpoint,
            insecure=not args.ca,
            **tls,
            # gRPC metadata keys must be lowercase (grpcio refuses others); HTTP/2 sends
            # every header name lowercase anyway.
            headers={k.lower(): v for k, v in headers.items()},
            timeout=EXPORT_TIMEOUT_S,
            compression=grpc.Compression.Gzip if args.gzip else grpc.Compression.NoCompression,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(
        endpoint=args.endpoint,
        certificate_file=args.ca,
        client_certificate_file=args.cert,
        client_key_file=args.key,
        headers=headers,
        timeout=EXPORT_TIMEOUT_S,
        compression=Compression.Gzip if args.gzip else Compression.NoCompression,
    )


def record(meter):
    orders = meter.create_counter("shop.orders", unit="{order}", description="Orders placed.")
    orders.add(3, {"method": "card"})
    orders.add(4, {"method": "card"})

    depth = meter.create_up_down_counter(
        "queue.depth", unit="{item}", description="Items waiting in the queue."
    )
    depth.add(10)
    depth.add(-3)

    if hasattr(meter, "create_gauge"):
        temp = meter.create_gauge("cpu.temperature", unit="Cel", description="CPU temperature.")
        temp.set(41.5)
    else:  # SDKs before the synchronous gauge
        from opentelemetry.metrics import Observation

        meter.create_observable_gauge(
            "cpu.temperature",
            callbacks=[lambda _options: [Observation(41.5)]],
            unit="Cel",
            description="CPU temperature.",
        )

    duration = meter.create_histogram(
        "http.server.duration", unit="ms", description="Server request duration."
    )
    for v in (5, 50, 50, 500, 5000):
        duration.record(v)

    size = meter.create_histogram("payload.size", unit="By", description="Payload size.")
    for v in (1, 2, 4, 1024):
        size.record(v)


def main():
    args, headers = parse_args()
    exporter = RecordingExporter(make_exporter(args, headers))
    reader = PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=math.inf,
        export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
    )
    provider = MeterProvider(
        resource=Resource.create(RESOURCE),
        metric_readers=[reader],
        views=[
            View(
                instrument_name="http.server.duration",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=[10, 100, 1000]),
            ),
            View(
                instrument_name="payload.size",
                aggregation=ExponentialBucketHistogramAggregation(),
            ),
        ],
    )
    record(provider.get_meter("traceo-e2e", "1.0.0"))

    started = time.time()
    provider.force_flush(timeout_millis=EXPORT_TIMEOUT_S * 1000 * 2)
    provider.shutdown()
    ok = exporter.results == [MetricExportResult.SUCCESS.name]
    print(
        json.dumps(
            {
                "ok": ok,
                "transport": args.transport,
                "endpoint": args.endpoint,
                "tenant": args.tenant,
                "gzip": args.gzip,
                "exports": exporter.results,
                "metrics": exporter.metrics,
                "data_points": exporter.data_points,
                "seconds": round(time.time() - started, 3),
            }
        ),
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
