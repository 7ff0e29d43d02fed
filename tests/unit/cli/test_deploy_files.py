"""docker-compose.yml, the Dockerfiles and configs/sidecar.service, checked without Docker or
systemd running: every file they name exists, the sidecar's command and configuration pass
`sidecar check-config`, and the app and the sidecar agree on the sockets between them."""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.support.process import ROOT, sidecar_command

COMPOSE = ROOT / "docker-compose.yml"
UNIT = ROOT / "configs" / "sidecar.service"
# What an operator sets (in .env) before `docker compose up`.
OPERATOR_ENV = {
    "SIDECAR_DOMAINS": "app.example.com, ws.example.com",
    "ACME_EMAIL": "ops@example.com",
    "SIDECAR_ALLOWED_ORIGINS": "https://app.example.com",
    "SIDECAR_KEY": "6c4a8f02b1d3e5f7a9c0",
    "SIDECAR_SECRET": "0123456789abcdef0123456789abcdef01234567",
}
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$; recursively."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        given = env.get(name, "")
        if given:
            return given
        if operator in (":?", "?"):
            raise MissingVariable(f"{name}: {argument}")
        return argument if operator in (":-", "-") else ""

    return VARIABLE.sub(one, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, OPERATOR_ENV if env is None else env)


def dockerfile(service: dict[str, Any]) -> tuple[Path, list[tuple[str, str]]]:
    """The build context and the Dockerfile's instructions, continuation lines joined."""
    build = service["build"]
    context = (ROOT / build["context"]).resolve()
    text = (context / build.get("dockerfile", "Dockerfile")).read_text()
    text = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return context, instructions


def copies(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """COPY destination -> (last) source."""
    out = {}
    for word, rest in instructions:
        if word == "COPY":
            *_, source, destination = shlex.split(rest)
            out[destination] = source
    return out


def exec_form(argument: str) -> list[str]:
    value = yaml.safe_load(argument)  # a JSON array is YAML too
    assert isinstance(value, list), f"use the exec form (a JSON array): {argument}"
    return value


def dockerignored(path: str, context: Path) -> bool:
    ignore = context / ".dockerignore"
    if not ignore.exists():
        return False
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def sidecar_config(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """The configuration the sidecar container runs with, rendered as its entrypoint does."""
    service = compose()["services"]["sidecar"]
    context, instructions = dockerfile(service)
    copied = copies(instructions)
    entrypoint = exec_form(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    command = exec_form(next(rest for word, rest in instructions if word == "CMD"))
    script = entrypoint[2]
    rendered = re.search(r"envsubst '([^']*)' < (\S+) > (\S+)", script)
    assert rendered is not None, script
    names = re.findall(r"\$\{(\w+)\}", rendered.group(1))
    template = context / copied[rendered.group(2)]
    assert command[:2] == ["run", "--config"] and command[2] == rendered.group(3)
    text = template.read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used == set(names), "every ${...} of the template is one envsubst replaces"
    environment = service["environment"]
    assert used <= set(environment), "every ${...} of the template is in the environment"
    for name in names:
        text = text.replace("${" + name + "}", str(environment[name]))
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return yaml.safe_load(text), path


# docker-compose.yml and the Dockerfiles ------------------------------------------------------


def test_compose_names_only_files_that_exist() -> None:
    services = compose()["services"]
    assert {"sidecar", "app", "redis"} <= set(services)
    for name in ("sidecar", "app"):
        context, instructions = dockerfile(services[name])
        assert instructions[0][0] == "FROM"
        for word, rest in instructions:
            if word != "COPY" or rest.startswith("--from"):
                continue
            *sources, _destination = shlex.split(rest)
            for source in sources:
                assert (context / source).exists(), f"{name}: COPY {source}: no such file"
                assert not dockerignored(source, context), f"{name}: {source} is dockerignored"


def test_the_sidecar_command_and_config_pass_check_config(tmp_path: Path) -> None:
    config, path = sidecar_config(tmp_path)
    result = subprocess.run(
        [*sidecar_command(), "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert config["tls"]["mode"] == "acme"
    assert config["tls"]["acme"]["domains"] == ["app.example.com", "ws.example.com"]
    assert config["apps"][0]["secret"] == OPERATOR_ENV["SIDECAR_SECRET"]


def test_compose_refuses_to_start_without_the_operator_s_settings() -> None:
    for name in OPERATOR_ENV:
        env = {k: v for k, v in OPERATOR_ENV.items() if k != name}
        with pytest.raises(MissingVariable, match=name):
            compose(env)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume."""
    out = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def volume_holding(service: dict[str, Any], path: str) -> str | None:
    for target, source in mounts(service).items():
        if PurePosixPath(path).is_relative_to(target):
            return source
    return None


def test_the_app_and_the_sidecar_share_their_sockets(tmp_path: Path) -> None:
    config, _ = sidecar_config(tmp_path)
    services = compose()["services"]
    sidecar, app = services["sidecar"], services["app"]
    upstream = config["upstream"]["url"].removeprefix("unix:")
    assert app["environment"]["APP_SOCKET"] == upstream
    assert app["environment"]["SIDECAR_SOCKET"] == config["publish"]["socket"]
    for path in (upstream, config["publish"]["socket"]):
        shared = volume_holding(sidecar, path)
        assert shared is not None and shared == volume_holding(app, path), path
        assert shared in compose()["volumes"]
    for name in ("SIDECAR_APP_ID", "SIDECAR_KEY", "SIDECAR_SECRET"):
        assert app["environment"][name] == sidecar["environment"][name]
    assert str(config["apps"][0]["id"]) == app["environment"]["SIDECAR_APP_ID"]
    assert config["apps"][0]["key"] == app["environment"]["SIDECAR_KEY"]


def test_ports_443_and_80_and_the_certificates_in_a_volume(tmp_path: Path) -> None:
    config, _ = sidecar_config(tmp_path)
    services = compose()["services"]
    ports = {str(p).split(":")[0]: int(str(p).split(":")[1]) for p in services["sidecar"]["ports"]}
    assert ports == {"443": config["listen"]["port"], "80": config["http"]["port"]}
    assert volume_holding(services["sidecar"], config["tls"]["dir"]) in compose()["volumes"]
    assert "ports" not in services["app"], "only the sidecar faces the network"


def test_the_app_image_runs_the_puma_example() -> None:
    services = compose()["services"]
    context, instructions = dockerfile(services["app"])
    workdir = [rest for word, rest in instructions if word == "WORKDIR"][-1]
    command = exec_form(next(rest for word, rest in instructions if word == "CMD"))
    assert command == ["puma", "-C", "puma.rb"]
    copied = copies(instructions)
    # /app/examples/puma in the image is examples/puma here.
    in_repo = context / PurePosixPath(workdir).relative_to("/app")
    assert (in_repo / "puma.rb").exists() and (in_repo / "config.ru").exists()
    assert any(PurePosixPath(workdir).is_relative_to("/app/" + d) for d in copied)
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    pusher_js = re.search(r"PUSHER_JS=(\S+)", env)
    assert pusher_js is not None and pusher_js.group(1) in copied


# systemd -------------------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_has_what_a_deployment_needs() -> None:
    service = unit()["Service"]
    assert service["Type"] in ("simple", "notify")
    assert service["Restart"] == "on-failure"
    assert "-HUP" in service["ExecReload"] and "$MAINPID" in service["ExecReload"]
    assert service["Group"] and service["User"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] in ("strict", "full")
    assert "CAP_NET_BIND_SERVICE" in service["AmbientCapabilities"]
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
    # Its directories are the ones configs/production.yaml uses.
    production = yaml.safe_load((ROOT / "configs" / "production.yaml").read_text())
    socket_dir = PurePosixPath(production["publish"]["socket"]).parent
    assert socket_dir == PurePosixPath("/run") / service["RuntimeDirectory"]
    assert PurePosixPath(production["tls"]["dir"]).is_relative_to(
        PurePosixPath("/var/lib") / service["StateDirectory"]
    )
    config = shlex.split(service["ExecStart"])
    assert config[1:3] == ["run", "--config"]
    assert shlex.split(service["ExecStartPre"])[1:] == ["check-config", config[3]]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit's keys are checked above")
    # The unit names /usr/local/bin/sidecar; here the command is the test environment's.
    installed = sidecar_command()[0]
    copy = tmp_path / "sidecar.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/sidecar", installed))
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, env=env)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "sidecar" in line]
    assert result.returncode == 0 and not ours, "\n".join(ours) or result.stderr
