"""A job's environment (``executor.child_environment``; docs/security.md)."""

from __future__ import annotations

from runevents.configs import ConfigRegistry, Configuration
from runevents.executor import child_environment

WORKER_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/worker",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY00",
    "AWS_SECRET_ACCESS_KEY": "StorageSecretKey-0123456789",
    "AWS_SESSION_TOKEN": "session-token-value",
    "PGPASSWORD": "database-password-42",
    "RUNEVENTS_DATABASE_URL": "postgresql://u:pw@db/runevents",
    "SRV_SECRET": "ServerSideSecret99",
}
RUN_VARS = {"RUNEVENTS_RUN_ID": "run_1"}


def config(id_: str, **kw: object) -> Configuration:
    return Configuration(workspace_id="acme", configuration_id=id_, command=("true",), **kw)  # type: ignore[arg-type]


def test_storage_credentials_reached_every_job() -> None:
    # Defect: a job got the worker's whole environment minus RUNEVENTS_*: the object
    # store's AWS_* credentials (every workspace's logs) and a secret only another
    # configuration declared (SRV_SECRET, masked in that configuration's runs only)
    other = config("srvsecret", secrets=("SRV_SECRET",), secret_values={"SRV_SECRET": "x" * 8})
    plain = config("py")
    registry = ConfigRegistry([other, plain])
    env = child_environment(WORKER_ENV, plain, RUN_VARS, registry.secret_names())
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/worker",
        "PYTHONUNBUFFERED": "1",
        "RUNEVENTS_RUN_ID": "run_1",
    }


def test_a_job_gets_what_its_own_configuration_names() -> None:
    own = config(
        "deploy",
        env={"AWS_REGION": "eu-west-1", "PGHOST": "jobs-db"},
        secrets=("AWS_SECRET_ACCESS_KEY", "SRV_SECRET"),
        secret_values={
            "AWS_SECRET_ACCESS_KEY": WORKER_ENV["AWS_SECRET_ACCESS_KEY"],
            "SRV_SECRET": WORKER_ENV["SRV_SECRET"],
        },
    )
    env = child_environment(WORKER_ENV, own, RUN_VARS, {"SRV_SECRET"})
    assert env["AWS_REGION"] == "eu-west-1" and env["PGHOST"] == "jobs-db"
    assert env["AWS_SECRET_ACCESS_KEY"] == WORKER_ENV["AWS_SECRET_ACCESS_KEY"]
    assert env["SRV_SECRET"] == WORKER_ENV["SRV_SECRET"]
    assert "AWS_ACCESS_KEY_ID" not in env and "PGPASSWORD" not in env
    assert "RUNEVENTS_DATABASE_URL" not in env
