"""Settings validation that refuses a configuration before any process starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from runevents.settings import Settings

POSTGRES = "postgresql://runevents@127.0.0.1:1/nowhere"
S3 = "s3://bucket/prefix"


def test_the_live_tier_cannot_be_turned_off_with_shared_object_storage(tmp_path: Path) -> None:
    # C4: contract 10, "on several machines no setting weakens this". With the tier off,
    # replica A acknowledged batches that replica B never saw, and lost them with A
    with pytest.raises(ValidationError, match=r"RUNEVENTS_LIVE_TIER=off is refused") as refused:
        Settings(data_dir=tmp_path, database_url=POSTGRES, storage_url=S3, live_tier="off")
    message = str(refused.value)
    assert "several-machines" in message and "file://" in message  # why, and what to do

    # the same from the environment, as a deployment sets it
    env = {"RUNEVENTS_LIVE_TIER": "off", "RUNEVENTS_DATABASE_URL": POSTGRES}
    env |= {"RUNEVENTS_STORAGE_URL": S3}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ValidationError, match="RUNEVENTS_LIVE_TIER=off"):
            Settings(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("database_url", "storage_url"),
    [(None, None), (POSTGRES, None), (POSTGRES, "memory://x"), (None, S3)],
)
def test_the_live_tier_may_be_off_where_nothing_is_shared(
    tmp_path: Path, database_url: str | None, storage_url: str | None
) -> None:
    # a local log store (or SQLite, one machine by nature): off is what auto gives anyway
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, storage_url=storage_url, live_tier="off"
    )
    assert settings.live_tier_enabled is False


@pytest.mark.parametrize("live_tier", ["auto", "on"])
def test_the_live_tier_is_on_with_shared_object_storage(tmp_path: Path, live_tier: str) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=POSTGRES, storage_url=S3, live_tier=live_tier
    )
    assert settings.live_tier_enabled is True


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_to_start_with_the_live_tier_off_on_shared_stores(
    tmp_path: Path, command: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNEVENTS_")}
    env |= {"RUNEVENTS_LIVE_TIER": "off", "NO_COLOR": "1", "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "runevents", command, "--data-dir", str(tmp_path),
         "--database-url", POSTGRES, "--storage-url", S3],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    out = done.stdout + done.stderr
    assert "RUNEVENTS_LIVE_TIER=off is refused" in out and "file://" in out, out
