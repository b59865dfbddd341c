"""The configurations file: the TOML format, its errors (file, key path, reason), secrets at load."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from runevents.config_file import load_config_file
from runevents.configs import BuildStep, ConfigRegistry, Configuration
from runevents.exceptions import ConfigError

FULL = """
[[configuration]]
workspace = "acme"
id = "etl"
description = "Nightly ETL"
command = ["python", "etl.py", "--fast"]
cwd = "jobs/etl"
timeout = "30m"
env = { LOG_LEVEL = "debug" }
[configuration.build]
commands = [
    ["python", "-m", "venv", ".venv"],
    [".venv/bin/pip", "install", "-r", "requirements.txt"],
]
inputs = ["requirements.txt"]
timeout = "10m"

[[configuration]]
workspace = "acme"
id = "report"
command = "./report.sh --out 'my file.csv'"
timeout = 90
"""


def write(tmp_path: Path, text: str, name: str = "runevents.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def entry(body: str, *, workspace: str = "acme", id: str = "etl") -> str:
    return f'[[configuration]]\nworkspace = "{workspace}"\nid = "{id}"\n{body}\n'


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = info.value.message
    assert message.startswith(f"{path}: "), message
    return message


def test_load_full_example(tmp_path: Path) -> None:
    (tmp_path / "jobs" / "etl").mkdir(parents=True)
    path = write(tmp_path, FULL)
    etl, report = load_config_file(path)
    job_dir = tmp_path / "jobs" / "etl"
    assert etl == Configuration(
        workspace_id="acme",
        configuration_id="etl",
        description="Nightly ETL",
        command=("python", "etl.py", "--fast"),
        cwd=job_dir,
        env={"LOG_LEVEL": "debug"},
        timeout_seconds=1800.0,
        build=BuildStep(
            commands=(
                ("python", "-m", "venv", ".venv"),
                (str(job_dir / ".venv/bin/pip"), "install", "-r", "requirements.txt"),
            ),
            inputs=(job_dir / "requirements.txt",),
            timeout_seconds=600.0,
        ),
        source=path,
    )
    assert report.command == (str(tmp_path / "report.sh"), "--out", "my file.csv")
    assert report.timeout_seconds == 90.0
    assert report.cwd == tmp_path
    assert report.build is None
    assert report.env == {}
    assert report.description == ""


def test_cwd_defaults_to_the_toml_files_directory(tmp_path: Path) -> None:
    path = write(tmp_path, entry('command = ["python", "x.py"]'))
    (config,) = load_config_file(path)
    assert config.cwd == tmp_path
    assert config.cwd.is_absolute()


def test_relative_path_of_the_file_itself_resolves_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "jobs").mkdir(parents=True)
    write(tmp_path / "conf", entry('command = ["bin/run"]\ncwd = "jobs"'))
    monkeypatch.chdir(tmp_path)
    (config,) = load_config_file(Path("conf/runevents.toml"))
    assert config.cwd == tmp_path / "conf" / "jobs"
    assert config.command == (str(tmp_path / "conf" / "jobs" / "bin" / "run"),)


def test_relative_program_resolved_against_cwd_without_following_symlinks(tmp_path: Path) -> None:
    (tmp_path / "job" / ".venv" / "bin").mkdir(parents=True)
    os.symlink("/usr/bin/env", tmp_path / "job" / ".venv" / "bin" / "python")
    path = write(tmp_path, entry('command = [".venv/bin/python", "a/b.py"]\ncwd = "./job/"'))
    (config,) = load_config_file(path)
    # The venv's link is kept (a resolved link would escape the venv); arguments are untouched.
    assert config.command == (str(tmp_path / "job" / ".venv" / "bin" / "python"), "a/b.py")


def test_bare_and_absolute_programs_are_left_alone(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        entry('command = ["python3", "-c", "pass"]')
        + entry('command = ["/bin/sh", "./x"]', id="abs"),
    )
    first, second = load_config_file(path)
    assert first.command == ("python3", "-c", "pass")
    assert second.command == ("/bin/sh", "./x")


def test_absolute_cwd_and_inputs(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    text = entry(
        f'command = ["true"]\ncwd = "{other}"\n'
        f'[configuration.build]\ncommands = ["make deps"]\ninputs = ["{tmp_path}/r.txt", "s.txt"]'
    )
    (config,) = load_config_file(write(tmp_path, text))
    assert config.cwd == other
    assert config.build is not None
    assert config.build.commands == (("make", "deps"),)
    assert config.build.inputs == (tmp_path / "r.txt", other / "s.txt")


def test_file_without_configurations_is_empty(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, "# nothing yet\n")) == []


def test_timeout_forms(tmp_path: Path) -> None:
    text = "".join(
        entry(f"command = ['x']\ntimeout = {value}", id=f"c{i}")
        for i, value in enumerate(['"1h30m"', "2.5", "7", '"500ms"'])
    )
    timeouts = [c.timeout_seconds for c in load_config_file(write(tmp_path, text))]
    assert timeouts == [5400.0, 2.5, 7.0, 0.5]


def test_error_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{path}: file not found$"):
        load_config_file(path)


def test_error_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read"):
        load_config_file(tmp_path)


def test_error_invalid_toml_names_file_and_position(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[configuration]]\nworkspace = "acme\n')
    assert "invalid TOML" in message
    assert "line 2" in message


def test_error_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "runevents.toml"
    path.write_bytes(b'description = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(path)


BAD_ENTRIES: list[tuple[str, str, str]] = [
    # (body after workspace/id, key path, reason fragment)
    ("command = ['x']\ntimeout = 'ten minutes'", "configuration[0].timeout",
     "invalid duration 'ten minutes': use forms like 0s, 90m, 36h, 7d"),
    ("command = ['x']\ntimeout = 0", "configuration[0].timeout", "must be a positive duration"),
    ("command = ['x']\ntimeout = '0s'", "configuration[0].timeout", "must be a positive"),
    ("command = ['x']\ntimeout = -5", "configuration[0].timeout", "must be a positive"),
    ("command = ['x']\ntimeout = inf", "configuration[0].timeout", "must be a positive"),
    ("command = ['x']\ntimeout = true", "configuration[0].timeout", "a number of seconds"),
    ("command = ['x']\ntimeout = [1]", "configuration[0].timeout", "a number of seconds"),
    ("", "configuration[0].command", "missing"),
    ("command = []", "configuration[0].command", "must not be empty"),
    ("command = ''", "configuration[0].command", "must not be empty"),
    ("command = ['']", "configuration[0].command", "must not be empty"),
    ("command = 'echo \"unclosed'", "configuration[0].command", "cannot split"),
    ("command = ['python', 3]", "configuration[0].command[1]", "must be a string"),
    ("command = 42", "configuration[0].command", "list of strings"),
    ('command = ["a", "b\\u0000c"]', "configuration[0].command[1]", "NUL"),
    ("command = ['x']\nenv = { N = 3 }", "configuration[0].env.N", "must be a string"),
    ("command = ['x']\nenv = { DEBUG = true }", "configuration[0].env.DEBUG", "quote"),
    ("command = ['x']\nenv = 'A=1'", "configuration[0].env", "must be a table"),
    ("command = ['x']\nenv = { 'A=B' = 'c' }", "configuration[0].env.A=B", "invalid variable"),
    ('command = ["x"]\nenv = { A = "x\\u0000" }', "configuration[0].env.A", "NUL"),
    ("command = ['x']\ncommnd = ['y']", "configuration[0].commnd", "unknown key"),
    ("command = ['x']\ndescription = 5", "configuration[0].description", "must be a string"),
    ("command = ['x']\ncwd = 'does/not/exist'", "configuration[0].cwd",
     "not an existing directory"),
    ("command = ['x']\ncwd = 7", "configuration[0].cwd", "directory path"),
    ("command = ['x']\nbuild = 'make'", "configuration[0].build", "must be a table"),
    ("command = ['x']\n[configuration.build]\ncommands = []", "configuration[0].build.commands",
     "non-empty list"),
    ("command = ['x']\n[configuration.build]\ncommands = [['ok'], [1]]",
     "configuration[0].build.commands[1][0]", "must be a string"),
    ("command = ['x']\n[configuration.build]\ncommands = [['ok']]\ninput = ['r.txt']",
     "configuration[0].build.input", "unknown key"),
    ("command = ['x']\n[configuration.build]\ncommands = [['ok']]\ninputs = 'r.txt'",
     "configuration[0].build.inputs", "list of file paths"),
    ("command = ['x']\n[configuration.build]\ncommands = [['ok']]\ninputs = ['a', 2]",
     "configuration[0].build.inputs[1]", "file path"),
    ("command = ['x']\n[configuration.build]\ncommands = [['ok']]\ntimeout = '10 min'",
     "configuration[0].build.timeout", "invalid duration '10 min'"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "key", "reason"), BAD_ENTRIES)
def test_error_bad_entry_names_file_key_and_reason(
    tmp_path: Path, body: str, key: str, reason: str
) -> None:
    message = load_error(tmp_path, entry(body))
    assert f": {key}: " in message
    assert reason in message


def test_error_key_path_counts_entries_from_zero(tmp_path: Path) -> None:
    text = (
        entry("command = ['a']", id="a")
        + entry("command = ['b']", id="b")
        + entry("command = ['c']\ntimeout = 'ten minutes'", id="c")
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert info.value.message == (
        f"{path}: configuration[2].timeout: invalid duration 'ten minutes': "
        "use forms like 0s, 90m, 36h, 7d"
    )
    assert info.value.details == {
        "file": str(path),
        "key": "configuration[2].timeout",
        "reason": "invalid duration 'ten minutes': use forms like 0s, 90m, 36h, 7d",
    }


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ('workspace = "acme"\n', "configuration[0].id"),
        ('id = "etl"\n', "configuration[0].workspace"),
    ],
)
def test_error_missing_ids(tmp_path: Path, header: str, key: str) -> None:
    message = load_error(tmp_path, f"[[configuration]]\n{header}command = ['x']\n")
    assert f": {key}: missing" in message


@pytest.mark.parametrize(
    ("workspace", "id", "key"),
    [
        ("..", "etl", "configuration[0].workspace"),
        ("a/b", "etl", "configuration[0].workspace"),
        ("acme", "-x", "configuration[0].id"),
        ("acme", "x" * 129, "configuration[0].id"),
    ],
)
def test_error_invalid_ids_checked_with_check_name(
    tmp_path: Path, workspace: str, id: str, key: str
) -> None:
    message = load_error(tmp_path, entry("command = ['x']", workspace=workspace, id=id))
    assert f": {key}: invalid" in message
    assert "must match" in message


def test_error_id_of_wrong_type(tmp_path: Path) -> None:
    text = "[[configuration]]\nworkspace = 5\nid = 'x'\ncommand = ['x']\n"
    assert ": configuration[0].workspace: invalid" in load_error(tmp_path, text)


def test_error_duplicate_workspace_and_id(tmp_path: Path) -> None:
    text = (
        entry("command = ['a']") + entry("command = ['b']", id="other") + entry("command = ['c']")
    )
    message = load_error(tmp_path, text)
    assert ": configuration[2]: duplicate configuration acme/etl (first at configuration[0])" in (
        message
    )


def test_error_unknown_top_level_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[configurations]]\nworkspace = "a"\n')
    assert ": configurations: unknown key" in message


def test_error_configuration_not_an_array_of_tables(tmp_path: Path) -> None:
    assert ": configuration: must be an array" in load_error(tmp_path, "configuration = 3\n")
    assert ": configuration[0]: must be a table" in load_error(tmp_path, "configuration = [3]\n")


def test_registry_duplicate_across_files(tmp_path: Path) -> None:
    first = load_config_file(write(tmp_path, entry("command = ['a']"), "a.toml"))
    second = load_config_file(write(tmp_path, entry("command = ['b']"), "b.toml"))
    with pytest.raises(ConfigError, match=r"a\.toml and .*b\.toml"):
        ConfigRegistry([*first, *second])


def test_secrets_take_values_from_env_first_then_the_environment(tmp_path: Path) -> None:
    text = entry(
        'command = ["x"]\nenv = { DB_PASSWORD = "from-the-config-env" }\n'
        'secrets = ["DB_PASSWORD", "API_TOKEN"]'
    )
    environ = {"DB_PASSWORD": "from-the-server-env", "API_TOKEN": "api-token-0123456789"}
    (config,) = load_config_file(write(tmp_path, text), environ=environ)
    assert config.secrets == ("DB_PASSWORD", "API_TOKEN")
    assert dict(config.secret_values) == {
        "DB_PASSWORD": "from-the-config-env",
        "API_TOKEN": "api-token-0123456789",
    }
    # never shown: not in repr, not in the API's JSON
    assert "api-token-0123456789" not in repr(config)
    assert "api-token-0123456789" not in str(config.to_dict())


def test_configurations_listing_masks_a_secret_in_the_command(tmp_path: Path) -> None:
    # Defect D8: to_dict (the JSON of GET /api/v1/configurations) returned the argv
    # as configured, so `--password=<secret>` was shown while run.started masked it.
    # Contract 11: masked in every response, with the masker's rules (encoded forms).
    secret = "db-Pa55word/2026+x="
    text = entry(
        f'command = ["psql", "--password={secret}", "--b64", "{base64.b64encode(secret.encode()).decode()}"]\n'
        f'description = "uses {quote(secret, safe="")}"\n'
        f'env = {{ DB_PASSWORD = "{secret}" }}\nsecrets = ["DB_PASSWORD"]'
    )
    (config,) = load_config_file(write(tmp_path, text), environ={})
    public = config.to_dict()
    assert public["command"] == ["psql", "--password=***", "--b64", "***"]
    assert public["description"] == "uses ***"
    assert secret not in repr(public)
    # what runs is still the real argv
    assert config.command[1] == f"--password={secret}"


def test_short_secret_is_refused_at_load_naming_file_configuration_and_reason(
    tmp_path: Path,
) -> None:
    text = entry('command = ["x"]\nsecrets = ["PIN"]', id="deploy")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path, environ={"PIN": "1234"})
    message = info.value.message
    assert message.startswith(f"{path}: configuration[0].secrets[0]: ")
    assert "acme/deploy" in message
    assert "PIN is 4 characters long; at least 8 are required" in message
    assert "1234" not in message  # the value itself is never printed


def test_unset_secret_is_refused_at_load(tmp_path: Path) -> None:
    message = load_error(tmp_path, entry('command = ["x"]\nsecrets = ["NOPE_NOT_SET_XYZ"]'))
    assert "configuration[0].secrets[0]" in message
    assert "NOPE_NOT_SET_XYZ is not set" in message


@pytest.mark.parametrize("value", ['"DB"', '["A=B"]', '[""]', "[1]"])
def test_bad_secrets_lists_are_refused(tmp_path: Path, value: str) -> None:
    message = load_error(tmp_path, entry(f'command = ["x"]\nsecrets = {value}'))
    assert "configuration[0].secrets" in message
