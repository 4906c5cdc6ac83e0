"""``chimney run``'s command line: what it needs before anything is set up, and the program's environment."""

from __future__ import annotations

import os

import pytest

from tcpchimney.api.run.shim import SHIM_DIR
from tcpchimney.api.run.shim.chimney_shim import ADDR_ENV, HOSTS_ENV, SOCKET_ENV
from tcpchimney.cli.main import parse_args
from tcpchimney.cli.run import program_environment


def test_the_program_comes_after_the_double_dash() -> None:
    args = parse_args(
        ["run", "--netns", "chimtest", "--offload", "enabled", "--", "python3", "-m", "http.server"]
    )
    assert args.program == ["python3", "-m", "http.server"]
    assert args.offload == "enabled" and args.nic == "process"


def test_options_after_the_double_dash_are_the_programs() -> None:
    args = parse_args(
        ["run", "--netns", "chimtest", "--", "python3", "app.py", "--netns", "other", "--hosts"]
    )
    assert args.netns == "chimtest" and args.hosts is None
    assert args.program == ["python3", "app.py", "--netns", "other", "--hosts"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "--netns", "chimtest"], "run needs a COMMAND after --"),
        (["run", "--netns", "chimtest", "--"], "run needs a COMMAND after --"),
        (["run", "--netns", "chimtest", "--hosts", "/nonexistent/hosts", "--", "python3"], "cannot read"),
        (["run", "--netns", "chimtest", "--offload", "disabled", "--churn", "1", "--", "python3"], "--churn"),
    ],
)
def test_bad_command_lines_get_one_sentence(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_hosts_file_not_in_hosts_format_is_refused(
    tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = os.path.join(tmp_path, "hosts")
    with open(hosts, "w") as file:
        file.write("198.18.0.1 peer\nbogus\n")
    with pytest.raises(SystemExit):
        parse_args(["run", "--netns", "chimtest", "--hosts", hosts, "--", "python3"])
    assert "line 2" in capsys.readouterr().err


def test_the_shim_goes_first_on_the_programs_path() -> None:
    env = program_environment({"PYTHONPATH": "/mine", HOSTS_ENV: "/stale"}, "/run/ctl", "198.18.0.2", None)
    assert env["PYTHONPATH"] == os.pathsep.join([SHIM_DIR, "/mine"])
    assert env[SOCKET_ENV] == "/run/ctl" and env[ADDR_ENV] == "198.18.0.2" and HOSTS_ENV not in env
    assert os.path.exists(os.path.join(SHIM_DIR, "sitecustomize.py"))
    assert program_environment({}, "/c", "198.18.0.2", "/h")["PYTHONPATH"] == SHIM_DIR


def test_any_python_gets_the_shim_and_keeps_its_own_sitecustomize(tmp_path: os.PathLike[str]) -> None:
    """The system's interpreter (not this environment's) loads the shim, then the sitecustomize it had."""
    import subprocess
    import sys

    theirs = os.path.join(tmp_path, "theirs")
    os.mkdir(theirs)
    with open(os.path.join(theirs, "sitecustomize.py"), "w") as file:
        file.write("import builtins\nbuiltins.CHAINED = True\n")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    env = program_environment(
        {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": theirs}, "/nowhere", "198.18.0.2", None
    )
    probe = "import socket, builtins; print(socket.socket.__name__, getattr(builtins, 'CHAINED', False))"
    out = subprocess.run(
        [python, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["StackSocket", "True"], out.stderr
    # Unpatched where the variable is missing: a Python outside chimney run is left alone.
    env.pop(SOCKET_ENV)
    out = subprocess.run(
        [python, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["socket", "True"], out.stderr
