"""Configurations: the model, the registry and the content hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from runevents.configs import BuildStep, ConfigRegistry, Configuration
from runevents.exceptions import ConfigError, ConfigurationNotFound


def make(**overrides: object) -> Configuration:
    fields: dict[str, object] = {
        "workspace_id": "acme",
        "configuration_id": "etl",
        "command": ("python", "etl.py"),
    }
    fields.update(overrides)
    return Configuration(**fields)  # type: ignore[arg-type]


def test_registry_get_and_not_found() -> None:
    config = make()
    registry = ConfigRegistry([config, make(workspace_id="beta")])
    assert registry.get("acme", "etl") is config
    with pytest.raises(ConfigurationNotFound, match="'nope'"):
        registry.get("acme", "nope")
    with pytest.raises(ConfigurationNotFound):
        registry.get("gamma", "etl")


def test_registry_list_filters_by_workspace() -> None:
    configs = [make(workspace_id="b"), make(workspace_id="a", configuration_id="z"), make()]
    registry = ConfigRegistry(configs)
    ids = [(c.workspace_id, c.configuration_id) for c in registry.list()]
    assert ids == [("a", "z"), ("acme", "etl"), ("b", "etl")]
    assert registry.list(["*"]) == registry.list()
    assert [c.workspace_id for c in registry.list(["b", "acme"])] == ["acme", "b"]
    assert registry.list([]) == []
    assert registry.list({"unknown"}) == []
    assert len(registry) == 3


def test_registry_add_duplicate_is_config_error_naming_sources(tmp_path: Path) -> None:
    registry = ConfigRegistry([make(source=tmp_path / "one.toml")])
    with pytest.raises(
        ConfigError, match=r"duplicate configuration acme/etl: defined in .*one\.toml"
    ):
        registry.add(make(source=tmp_path / "two.toml"))


def test_configuration_rejects_bad_ids_and_empty_command_in_code() -> None:
    with pytest.raises(ConfigError, match="invalid workspace id"):
        make(workspace_id="../x")
    with pytest.raises(ConfigError, match="command must not be empty"):
        make(command=())


def test_to_dict_lists_env_keys_never_values() -> None:
    config = make(
        env={"TOKEN": "s3cret", "A": "1"},
        description="d",
        timeout_seconds=5.0,
        build=BuildStep(commands=(("make",),)),
    )
    public = config.to_dict()
    assert public == {
        "workspace_id": "acme",
        "configuration_id": "etl",
        "description": "d",
        "command": ["python", "etl.py"],
        "has_build": True,
        "timeout_seconds": 5.0,
        "env_keys": ["A", "TOKEN"],
    }
    assert "s3cret" not in repr(public)
    assert make().to_dict()["has_build"] is False


def build_config(cwd: Path, **build: object) -> Configuration:
    step: dict[str, object] = {"commands": (("pip", "install", "-r", "req.txt"),)}
    step.update(build)
    return make(cwd=cwd, build=BuildStep(**step))  # type: ignore[arg-type]


def test_content_hash_is_stable_sha256_hex(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("a==1\n")
    config = build_config(tmp_path, inputs=(Path("req.txt"),))
    digest = config.content_hash()
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == build_config(tmp_path, inputs=(Path("req.txt"),)).content_hash()


def test_content_hash_follows_the_content_of_build_inputs(tmp_path: Path) -> None:
    req = tmp_path / "req.txt"
    req.write_text("a==1\n")
    config = build_config(tmp_path, inputs=(Path("req.txt"),))
    before = config.content_hash()
    req.write_text("a==2\n")
    assert config.content_hash() != before
    req.write_text("a==1\n")
    assert config.content_hash() == before


def test_content_hash_missing_input_is_a_marker_not_a_crash(tmp_path: Path) -> None:
    config = build_config(tmp_path, inputs=(Path("absent.txt"), tmp_path))
    missing = config.content_hash()
    (tmp_path / "absent.txt").write_text("")
    assert config.content_hash() != missing


@pytest.mark.parametrize(
    "change",
    [
        {"command": ("python", "other.py")},
        {"env": {"A": "2"}},
        {"cwd": Path("/elsewhere")},
        {"build": BuildStep(commands=(("pip", "install", "x"),))},
        {"build": BuildStep(commands=(("pip", "install", "-r", "req.txt"),), timeout_seconds=9)},
        {"build": None},
    ],
)
def test_content_hash_covers_command_cwd_env_and_build(
    tmp_path: Path, change: dict[str, object]
) -> None:
    base = build_config(tmp_path)
    base = Configuration(**{**base.__dict__, "env": {"A": "1"}})
    changed = Configuration(**{**base.__dict__, **change})
    assert changed.content_hash() != base.content_hash()


def test_content_hash_ignores_description_run_timeout_and_env_order(tmp_path: Path) -> None:
    base = make(env={"A": "1", "B": "2"}, cwd=tmp_path)
    same = make(env={"B": "2", "A": "1"}, cwd=tmp_path, description="x", timeout_seconds=3.0)
    assert base.content_hash() == same.content_hash()
