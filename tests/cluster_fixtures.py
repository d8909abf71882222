"""Fixtures of the cluster tests: an S3-compatible server on localhost (moto's server mode)."""

from __future__ import annotations

import os

import pytest

# Fake credentials for the local S3 server, set at import (before a test module starts Ray) so that Ray
# workers, which get the driver's AWS_* variables (arena/tournament/runner.py), open the same storage.
for _k, _v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(_k, _v)


# The tiny tournament both cluster test files run: two cells, a protector that runs and one that is free.
TINY = {
    "name": "c",
    "datasets": [{"name": "digits", "params": {"size": 16}, "train": 120, "test": 60}],
    "protectors": ["none", "classwise-noise"],
    "exploiters": ["none"],
    "architectures": ["cnn-small"],
    "recipe": {"epochs": 1, "batch_size": 64},
    "seeds": [0],
    "resources": {"cpus_per_trial": 1},
}


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on localhost. ``allow_delayed_open`` makes pyarrow send small objects in one PUT
    (moto does not complete pyarrow's multipart uploads)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="arena")
    yield f"endpoint_override={host}:{port}&scheme=http&allow_delayed_open=true", f"http://{host}:{port}"
    server.stop()
