"""Planted secrets go nowhere: an AWS secret key, a Sentinel Hub client secret and a PostGIS password,
set in the environment of every command of the fault suite (faultkit.PLANTED), must not appear in any
command's output, any store (local folders, and every object in moto's buckets), LCMS_HOME, or any
Prefect database (the suite's server and the commands' temporary servers, whose artifacts and logs
live there).

This test runs one command that really uses two of them: `lcms download` from Sentinel Hub (the local
fake of tests/sentinelhub_service.py, which only accepts the planted client secret) into an S3 store
(requests signed with the planted AWS key). Then it searches everything the suite's commands wrote so
far (it runs last in tests/faults/): the temporary Prefect server's database is the one of the kill
test's download command, which runs without PREFECT_API_URL.
"""

from __future__ import annotations

import uuid

import boto3
from faultkit import LOGS, PLANTED, STORES, command_env, find_planted, record, small_config, start
from sentinelhub_service import FakeSentinelHub

from tasks.download.synthetic import SyntheticScene


def test_planted_secrets_appear_in_no_log_store_or_prefect_database(tmp_path, s3_endpoint, prefect_api, reference_gpkg):
    bucket = f"lcms-faults-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    scene = SyntheticScene(seed=5, dates_per_year=6, cloud_cover=0.2)
    with FakeSentinelHub(
        scene=scene, years=(2023,), coverage=(14.0, 45.5, 15.0, 46.5), client_secret=PLANTED["SH_CLIENT_SECRET"]
    ) as service:
        source = {"kind": "sentinelhub", "base_url": service.url, "token_url": service.token_url}
        cfg = small_config(tmp_path / "cfg", f"s3://{bucket}/store", reference_gpkg, years=[2023], source=source)
        env = command_env(tmp_path, prefect_api.url, AWS_ENDPOINT_URL=s3_endpoint, SH_CLIENT_ID=service.client_id)
        command = start(["download", str(cfg)], env, tmp_path / "logs" / "download-sentinelhub.log")
        code = command.wait(400)
        tokens = service.counts.get("token", 0)
        requests = sum(service.counts.values())
    assert code == 0, command.output()[-3000:]
    assert tokens > 0 and requests > tokens, f"the download did not use Sentinel Hub: {dict(service.counts)}"

    # every object of every bucket on moto: the S3 stores of this and the other fault tests
    objects = tmp_path / "s3-objects"
    count = 0
    for entry in s3.list_buckets()["Buckets"]:
        name = entry["Name"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                target = objects / name / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(s3.get_object(Bucket=name, Key=obj["Key"])["Body"].read())
                count += 1
    places = [tmp_path, *LOGS, *STORES]
    files = sum(1 for p in places for _ in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else []))
    databases = [p for base in places if base.is_dir() for p in base.rglob("*.db")]
    hits = find_planted(places)
    record(
        "planted secrets: AWS secret key, Sentinel Hub client secret, PostGIS password (env of every command)",
        command.text + " (Sentinel Hub → S3) + search",
        code,
        None,
        command.seconds,
        f"{files} files searched ({len(LOGS)} command logs, {count} S3 objects, {len(databases)} Prefect "
        f"databases, stores, LCMS_HOME); {len(hits)} found; Sentinel Hub requests: {requests} ({tokens} token)",
    )
    assert databases, "no Prefect database was searched"
    assert not hits, hits
