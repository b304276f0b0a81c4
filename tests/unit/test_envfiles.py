import pytest

from rq_worker_service.config import ConfigError
from rq_worker_service.envfiles import KEYS_VAR, commands_environment, refresh_environment


def test_files_override_dotenv_does_not_and_removed_keys_disappear(tmp_path):
    unit_file = tmp_path / "worker.env"
    dotenv = tmp_path / ".env"
    unit_file.write_text("RQ_QUEUES=a\nREDIS_URL=redis://x/0\n")
    dotenv.write_text("APP_SETTING=1\nRQ_QUEUES=from-dotenv\nHOME=/nope\n")
    env = {"HOME": "/root", "RQ_QUEUES": "from-unit-environment"}

    refresh_environment([str(unit_file), str(tmp_path / "missing.env")], dotenv, env)
    assert env["RQ_QUEUES"] == "a"  # the unit's files win, as in systemd
    assert env["APP_SETTING"] == "1"
    assert env["HOME"] == "/root"  # .env never overrides the real environment
    assert set(env[KEYS_VAR].split(",")) == {"RQ_QUEUES", "REDIS_URL", "APP_SETTING"}

    unit_file.write_text("RQ_QUEUES=a,b\n")  # REDIS_URL deleted from the file
    dotenv.write_text("")
    refresh_environment([str(unit_file)], dotenv, env)
    assert env["RQ_QUEUES"] == "a,b"
    assert "REDIS_URL" not in env
    assert "APP_SETTING" not in env
    assert env["HOME"] == "/root"


@pytest.mark.parametrize("make, fix", [
    (lambda p: p.mkdir(), "a directory, not an environment file: name the file"),  # where the file should be
    (lambda p: p.write_bytes(b"A=1\nRQ_QUEUES=\xff\xfe\n"), "line 2 is not UTF-8 text; write the file in UTF-8"),
])
def test_a_file_that_cannot_be_read_is_a_one_line_config_error(tmp_path, make, fix):
    dotenv = tmp_path / ".env"
    make(dotenv)
    with pytest.raises(ConfigError) as info:
        refresh_environment([], dotenv, {})
    assert str(info.value).startswith(f"{dotenv}: {fix}") and "\n" not in str(info.value)


def app_and_unit_file(tmp_path, app_dotenv: str):
    """An app directory with its .env, and the unit's worker.env naming it as RQ_APP_DIR."""
    app = tmp_path / "reportapp"
    app.mkdir()
    (app / ".env").write_text(app_dotenv)
    unit_file = tmp_path / "worker.env"
    unit_file.write_text(f"RQ_APP_DIR={app}\nRQ_QUEUES=report_analysis\n")
    return unit_file


def test_rq_app_dir_s_env_is_read_after_the_units_files_and_the_cwd_one_is_not(tmp_path):
    unit_file = app_and_unit_file(tmp_path, "REDIS_DB=1\nREDIS_PASSWORD=app-secret\nRQ_QUEUES=from-app\n"
                                            "APP_MODE=prod\n")
    cwd_dotenv = tmp_path / ".env"
    cwd_dotenv.write_text("NOT_READ=1\n")
    env: dict[str, str] = {}
    refresh_environment([str(unit_file)], cwd_dotenv, env)
    assert (env["REDIS_DB"], env["REDIS_PASSWORD"], env["APP_MODE"]) == ("1", "app-secret", "prod")
    assert env["RQ_QUEUES"] == "report_analysis"  # the unit's files win over the app's .env
    assert "NOT_READ" not in env


def test_the_commands_see_what_the_workers_see_from_any_directory(tmp_path):
    unit_file = app_and_unit_file(tmp_path, "REDIS_DB=1\nRQ_QUEUES=from-app\n")
    env = commands_environment(unit_file, tmp_path / "elsewhere" / ".env", {"REDIS_PASSWORD": "typed-by-hand"})
    assert (env["REDIS_DB"], env["RQ_QUEUES"], env["REDIS_PASSWORD"]) == ("1", "report_analysis", "typed-by-hand")


def test_a_nul_in_an_env_file_is_a_one_line_config_error(tmp_path):
    """Found by issue 26's corpus work: a NUL in a value (only a file can carry one) reached
    os.environ, which raises ValueError: a traceback from `run`, `run --check` and `status`."""
    env_file = tmp_path / "worker.env"
    env_file.write_bytes(b"RQ_QUEUES=a\x00b\n")
    with pytest.raises(ConfigError) as info:
        refresh_environment([str(env_file)], tmp_path / ".env", environ={})
    assert str(info.value) == f"{env_file}: 'RQ_QUEUES' holds a NUL character; remove it"
