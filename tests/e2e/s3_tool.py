"""The S3 side of tests/e2e/s3.rs, as a user of the buckets would see them: buckets made and
listed with boto3, Parquet read back with pyarrow's S3 filesystem and with duckdb's httpfs.
Run with the virtualenv scripts/install-test-deps.sh builds ($TRACEO_S3_PYTHON):

    s3_tool.py --endpoint http://127.0.0.1:PORT mkbucket REGION BUCKET...
    s3_tool.py --endpoint ... rows BUCKET[/PREFIX]       # pyarrow: one JSON line per row
    s3_tool.py --endpoint ... duckdb BUCKET[/PREFIX]     # duckdb read_parquet('s3://...')
    s3_tool.py --endpoint ... census BUCKET              # objects, uploads, samples per request
    s3_tool.py --endpoint ... watch-uploads BUCKET       # a line per multipart upload begun

Any object that is not a whole Parquet file makes `rows` and `census` fail: that is the check
that no partial object is ever visible.
"""

import argparse
import json
import sys
import time
from urllib.parse import urlparse

KEY_ID = "traceo-e2e"
SECRET = "traceo-e2e-secret"
# moto keeps one namespace whatever the region; the client needs one to sign with.
SIGNING_REGION = "us-east-1"
PROBE_PREFIX = "_traceo_probe/"


def boto(endpoint):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name=SIGNING_REGION,
    )


def split(target):
    bucket, _, prefix = target.partition("/")
    return bucket, prefix.strip("/")


def objects(client, bucket, prefix=""):
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def pyarrow_fs(endpoint):
    from pyarrow import fs

    u = urlparse(endpoint)
    return fs.S3FileSystem(
        access_key=KEY_ID,
        secret_key=SECRET,
        region=SIGNING_REGION,
        endpoint_override=u.netloc,
        scheme=u.scheme,
    )


def parquet_tables(endpoint, target):
    """(key, table) for every Parquet object under target, read through pyarrow's S3
    filesystem; raises on an object that is not a whole Parquet file."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    s3 = pyarrow_fs(endpoint)
    bucket, prefix = split(target)
    base = f"{bucket}/{prefix}" if prefix else bucket
    for info in s3.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type != fs.FileType.File or not info.path.endswith(".parquet"):
            continue
        key = info.path[len(bucket) + 1 :]
        try:
            table = pq.read_table(info.path, filesystem=s3)
        except Exception as e:  # noqa: BLE001 - the message is the finding
            raise SystemExit(f"s3://{info.path} ({info.size} bytes) is not a whole Parquet file: {e}")
        yield key, table


def float_text(v):
    """A sample value as text (`repr`): JSON has no NaN, and staleness markers are NaN."""
    return None if v is None else repr(float(v))


def cmd_mkbucket(args):
    client = boto(args.endpoint)
    for bucket in args.buckets:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": args.region})


def cmd_rows(args):
    import pyarrow.compute as pc

    for key, table in parquet_tables(args.endpoint, args.target):
        # Epoch milliseconds straight from the column: no datetime, no local time zone.
        ms = pc.cast(table["timestamp"], "int64").to_pylist()
        for r, ts in zip(table.to_pylist(), ms):
            row = {
                "key": key,
                "tenant": r["tenant"],
                "region": r["region"],
                "metric": r["metric"],
                "labels": dict(r["labels"]),
                "timestamp_ms": ts,
                "value": float_text(r["value"]),
            }
            print(json.dumps(row))


def cmd_duckdb(args):
    import duckdb
    from duckdb_extensions import extension_importer

    u = urlparse(args.endpoint)
    con = duckdb.connect()
    # The httpfs extension from PyPI: the tests have no internet to download it.
    extension_importer.import_extension("httpfs", con=con)
    con.execute("LOAD httpfs")
    con.execute(
        f"""CREATE SECRET e2e (TYPE s3, KEY_ID '{KEY_ID}', SECRET '{SECRET}',
            REGION '{SIGNING_REGION}', ENDPOINT '{u.netloc}', URL_STYLE 'path',
            USE_SSL {'true' if u.scheme == 'https' else 'false'})"""
    )
    bucket, prefix = split(args.target)
    glob = f"s3://{bucket}/{prefix + '/' if prefix else ''}**/*.parquet"
    query = f"""SELECT filename, tenant, region, metric, to_json(labels), epoch_ms(timestamp), value
                FROM read_parquet('{glob}', filename = true, hive_partitioning = false)"""
    for filename, tenant, region, metric, labels, ts, value in con.execute(query).fetchall():
        print(
            json.dumps(
                {
                    "key": filename[len(f"s3://{bucket}/") :],
                    "tenant": tenant,
                    "region": region,
                    "metric": metric,
                    "labels": json.loads(labels),
                    "timestamp_ms": ts,
                    "value": float_text(value),
                }
            )
        )


def cmd_census(args):
    """What a consumer of the bucket finds: the objects (multipart ones told by their ETag's
    -N suffix), the multipart uploads begun and never completed (invisible to readers), any
    key that is neither Parquet nor the probe's, and samples per (tenant, timestamp)."""
    import pyarrow.compute as pc

    client = boto(args.endpoint)
    listed = list(objects(client, args.target))
    uploads = client.list_multipart_uploads(Bucket=args.target).get("Uploads", [])
    counts = {}
    rows = 0
    for _key, table in parquet_tables(args.endpoint, args.target):
        rows += table.num_rows
        t = table.select(["tenant", "timestamp"])
        ms = pc.cast(t["timestamp"], "int64").to_pylist()
        for tenant, ts in zip(t["tenant"].to_pylist(), ms):
            counts[(tenant, ts)] = counts.get((tenant, ts), 0) + 1
    print(
        json.dumps(
            {
                "objects": sum(1 for o in listed if o["Key"].endswith(".parquet")),
                "multipart_objects": sum(
                    1 for o in listed if o["Key"].endswith(".parquet") and "-" in o["ETag"]
                ),
                "largest_object_bytes": max((o["Size"] for o in listed if o["Key"].endswith(".parquet")), default=0),
                "incomplete_uploads": len(uploads),
                "other_keys": [
                    o["Key"]
                    for o in listed
                    if not o["Key"].endswith(".parquet") and not o["Key"].startswith(PROBE_PREFIX)
                ],
                "rows": rows,
                "counts": [[t, ts, n] for (t, ts), n in counts.items()],
            }
        )
    )


def cmd_watch_uploads(args):
    """Prints `upload KEY` (flushed) for each multipart upload seen in progress, polling
    every few milliseconds, until killed."""
    client = boto(args.endpoint)
    seen = set()
    while True:
        for u in client.list_multipart_uploads(Bucket=args.target).get("Uploads", []):
            if u["UploadId"] not in seen:
                seen.add(u["UploadId"])
                print(f"upload {u['Key']}", flush=True)
        time.sleep(0.005)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("mkbucket")
    mk.add_argument("region")
    mk.add_argument("buckets", nargs="+")
    for name in ["rows", "duckdb", "census", "watch-uploads"]:
        sub.add_parser(name).add_argument("target")
    args = p.parse_args()
    {
        "mkbucket": cmd_mkbucket,
        "rows": cmd_rows,
        "duckdb": cmd_duckdb,
        "census": cmd_census,
        "watch-uploads": cmd_watch_uploads,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
