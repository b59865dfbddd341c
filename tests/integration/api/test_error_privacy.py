"""An error answer names the run and the reason, never where the server keeps its files.

Found from outside: with the object store away, a 503 said "S3 stat of
s3://<bucket>/<prefix>/workspaces/... failed: cannot reach http://<endpoint>":
the bucket, the prefix and the endpoint, to any caller. The server log keeps
the whole message; the answer replaces those places with words.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from runevents.api.app import create_app
from runevents.app import App
from runevents.settings import Settings
from tests.fixtures.app import asgi_client
from tests.fixtures.s3 import SeaweedFS
from tests.fixtures.tcpproxy import TcpProxy


async def test_a_503_named_the_bucket_the_prefix_and_the_s3_endpoint(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
) -> None:
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    endpoint = urlsplit(server.endpoint_url)
    assert endpoint.hostname is not None and endpoint.port is not None
    proxy = TcpProxy(endpoint.hostname, endpoint.port)
    proxy.start()
    proxied = f"http://127.0.0.1:{proxy.port}"
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxied)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", server.region)
    prefix = f"privacy/{uuid.uuid4().hex}"
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        storage_url=server.url(prefix),
        worker_concurrency=0,
        maintenance_interval_seconds=0,
        repair_interval_seconds=0,
    )
    app = await App.open(settings, worker=False)
    try:
        async with asgi_client(create_app(settings, app=app)) as client:
            proxy.stop()  # the object store is away
            answers = []
            for _ in range(3):
                answer = await client.post(
                    "/api/v1/workspaces/acme/configurations/ext/runs", json={"external": True}
                )
                answers.append(answer)
                if answer.status_code == 503:
                    break
            assert answers[-1].status_code == 503, [a.text for a in answers]
            message = answers[-1].json()["error"]["message"]
            for place in (
                server.url(prefix),
                prefix,
                proxied,
                f"127.0.0.1:{proxy.port}",
                str(settings.data_dir.resolve()),
            ):
                assert place not in message, message
            assert "the log store" in message or "the object store" in message, message
    finally:
        proxy.stop()
        await app.close()
