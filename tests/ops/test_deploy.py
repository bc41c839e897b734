"""deploy/: the Dockerfile's dry check, the systemd unit, the alert rules' shape.

The Dockerfile dry check needs no Docker: it runs every ``RUN pip ...`` line of
deploy/Dockerfile, in order, with the image paths mapped into a temporary
directory (``/src`` gets what the ``COPY`` lines copy, ``/wheels`` a folder) and
``pip`` the pip of a fresh virtual environment, as the final stage's Python.
Then it starts the installed ``ENTRYPOINT`` with the image's ``ENV`` and runs
the ``HEALTHCHECK`` command against it. Non-Python steps (``useradd``) are not
run. It needs the package index, as ``docker build`` does; unlike the image
build it may use pip's cache (``--no-cache-dir`` is dropped), to stay quick.
It runs in CI (``CI=true``, as .ci/run is run) or with ``CPC_TEST_DOCKERFILE=1``;
a plain local ``make test`` skips it to keep the suite short.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from cpc_signaling.server.config import Config, env_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("CPC_TEST_DOCKERFILE")),
    reason="the Dockerfile dry check (20-60 s of pip) runs in CI (CI=true) "
    "or with CPC_TEST_DOCKERFILE=1",
)
@pytest.mark.timeout(600)  # pip over the network, on a fresh machine without a cache
def test_dockerfile_python_steps_build_and_serve(tmp_path: Path) -> None:
    steps = dockerfile_instructions()
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    mapping = {"/src": str(src), "/wheels": str(wheels)}

    def image_path(arg: str) -> str:
        for image, local in mapping.items():
            if arg == image or arg.startswith(image + "/"):
                return local + arg[len(image) :]
        return arg

    # Build stage: COPY from the repository into /src (WORKDIR).
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            *sources, dest = args.split()
            target = src / dest.removeprefix("./") if dest not in ("./", ".") else src
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    ran = 0
    for word, args in steps:
        if word != "RUN":
            continue
        for command in args.split("&&"):
            argv = [image_path(a) for a in shlex.split(command)]
            if argv[0] == "pip":
                # pip's cache is allowed here (only the image must not keep one): the
                # same packages and the same install, without re-downloading them.
                argv = [a for a in argv if a != "--no-cache-dir"]
                # The build stage's pip runs in /src; the project venv's Python builds there.
                result = subprocess.run(
                    [str(python), "-m", "pip", *argv[1:]],
                    cwd=src,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
                ran += 1
            elif argv[:2] == ["rm", "-rf"]:
                for path in argv[2:]:
                    assert path.startswith(str(tmp_path)), path
                    shutil.rmtree(path, ignore_errors=True)
    assert ran >= 2  # the wheel build and the offline install
    assert not wheels.exists()

    # The image's ENV, its ENTRYPOINT from the venv, on loopback and a free port.
    env = dict(os.environ)
    for word, args in steps:
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    env.update(CPC_HOST="127.0.0.1", CPC_PORT="0", CPC_LOG_FORMAT="json")
    entry = json.loads(next(args for word, args in steps if word == "ENTRYPOINT"))
    proc = subprocess.Popen(
        [str(env_dir / "bin" / entry[0]), *entry[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            match = re.search(r"ws://127\.0\.0\.1:(\d+)/ws", line)
            if match:
                port = match.group(1)
                json.loads(line)  # CPC_LOG_FORMAT=json from the image's ENV
                break
        assert port is not None, "the installed server did not start"
        health = next(args for word, args in steps if word == "HEALTHCHECK")
        cmd = json.loads(health.split("CMD", 1)[1].strip())
        assert cmd[0] == "python"
        check = subprocess.run([str(python), *cmd[1:]], env={**env, "CPC_PORT": port}, timeout=30)
        assert check.returncode == 0
        proc.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_systemd_unit_runs_the_installed_server() -> None:
    unit = (DEPLOY / "systemd" / "cpc-signaling.service").read_text()
    sections = re.findall(r"^\[(\w+)\]$", unit, re.MULTILINE)
    assert sections == ["Unit", "Service", "Install"]
    values = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    assert values["ExecStart"].split()[1:] == ["serve"]
    assert values["KillSignal"] == "SIGTERM"
    # Every CPC_* variable the unit's comments suggest is a real option.
    known = {env_name(f) for f in Config.__dataclass_fields__}
    suggested = set(re.findall(r"\b(CPC_[A-Z_]+)=", unit))
    assert suggested and suggested <= known, suggested - known
    # The command line it runs, with the suggested variables, starts and stops cleanly.
    env = {
        **os.environ,
        "CPC_HOST": "127.0.0.1",
        "CPC_PORT": "0",
        "CPC_LOG_FORMAT": "json",
        "CPC_API_KEY": "k" * 32,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpc_signaling", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "ws://" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_alert_rules_are_well_formed() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    alerts = re.findall(r"^      - alert: (\w+)$", text, re.MULTILINE)
    exprs = re.findall(r"^        expr: ", text, re.MULTILINE)
    assert len(alerts) == len(exprs) >= 10
    assert len(set(alerts)) == len(alerts)
    assert "\t" not in text


@pytest.mark.parametrize("name", ["cpc-signaling.json"])
def test_grafana_dashboard_is_valid_json(name: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / name).read_text())
    assert dashboard["uid"] == "cpc-signaling"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    assert all(panel["targets"] for panel in dashboard["panels"])
