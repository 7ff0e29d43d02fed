"""`sidecar`: run the relay, check a configuration, publish an event, ask a running one."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.config import model as config_module
from sidecar.config.model import Config, ConfigError

if TYPE_CHECKING:
    from sidecar.server.prepare import Prepared

EXIT_CONFIG = 2
EXIT_START = 1


def fail(message: str, status: int) -> int:
    """One line on stderr, the exit status back: how every command reports a refusal."""
    print(f"sidecar: {message}", file=sys.stderr)
    return status


def _load(path: str | None) -> Config:
    if path is None:
        return Config()
    return config_module.load(path)


def banner(prepared: Prepared) -> None:
    cfg = prepared.config
    app = prepared.apps.apps[0]
    scheme = "ws" if cfg.tls.mode == "off" else "wss"
    host = "localhost" if cfg.listen.host in ("0.0.0.0", "::", "127.0.0.1") else cfg.listen.host
    if cfg.tls.acme is not None:
        host = cfg.tls.acme.domains[0]  # the name the certificate is for
    options = {
        "wsHost": host,
        "wsPort": cfg.listen.port,
        "wssPort": cfg.listen.port,
        "forceTLS": scheme == "wss",
        "enabledTransports": ["ws"],  # pusher-js names the transport ws, TLS or not
        "cluster": "sidecar",
    }
    lines = [
        "",
        "Sidecar is running.",
        f"  WebSocket  {scheme}://{host}:{cfg.listen.port}/app/{app.key}?protocol=7",
        f"  Publish    unix socket {cfg.publish.socket} (POST /apps/{app.id}/events)",
    ]
    if cfg.upstream is not None:
        page = "http" if scheme == "ws" else "https"
        lines.append(f"  App        {page}://{host}:{cfg.listen.port}/ -> {cfg.upstream.url}")
    lines += [
        "",
        "Connect with pusher-js:",
        f"  new Pusher({json.dumps(app.key)}, {json.dumps(options)})",
    ]
    if prepared.cert is not None and cfg.tls.mode == "self-signed":
        lines += [
            "",
            "Trust the development certificate in your client:",
            f"  {prepared.cert.resolve()}",
            f"  (Node: NODE_EXTRA_CA_CERTS={prepared.cert}; a browser: import it as an authority)",
        ]
    if prepared.app_created:
        kept = Path(cfg.tls.dir) / "app.json"
        if on_terminal():
            lines += [
                "",
                f"App id {app.id}, key {app.key}, secret {app.secret}",
                f"  generated once, kept in {kept} (mode 0600); shown this one time only.",
            ]
        else:  # stdout is a log or a journal: the secret stays in its file
            lines += ["", f"App id {app.id}, key {app.key}; its secret is in {kept} (mode 0600)."]
    lines += [
        "",
        "Publish an event:",
        f"  {invoked_as()} publish --socket {cfg.publish.socket} my-channel my-event "
        + """'{"hello":"world"}'""",
        "",
    ]
    print("\n".join(lines), flush=True)


def on_terminal() -> bool:
    """Both output streams are a terminal: a person reads them, no log or journal keeps them."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def invoked_as(argv0: str | None = None) -> str:
    """How to type `sidecar` again: plain when it is on the PATH, else the path it was run by
    (`.venv/bin/sidecar` after the Quick start, without the venv activated)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    if name != "sidecar":  # python -m sidecar.cli
        return f"{sys.executable} -m sidecar.cli"
    if os.sep not in argv0:
        return "sidecar"
    found = shutil.which("sidecar")
    if found is not None and os.path.realpath(found) == os.path.realpath(argv0):
        return "sidecar"
    return argv0


def cmd_run(args: argparse.Namespace) -> int:
    from sidecar.api.unix import SocketInUse
    from sidecar.engine.broker.redis_link import check_reachable
    from sidecar.observe.logging import setup
    from sidecar.server import prepare as app_module
    from sidecar.server import single
    from sidecar.server import supervisor as cluster
    from sidecar.server.lifecycle import ignore_hangup, run_loop
    from sidecar.server.startup import StartError
    from sidecar.tls.certinfo import CertificateError

    # A SIGHUP while starting (a deploy script reloading early) is not an end: the file is
    # read next, and the loop's handler reloads from then on.
    ignore_hangup()
    text = None
    try:
        if args.config is None:
            cfg = Config()
        else:
            text = config_module.read_text(args.config)
            cfg = config_module.parse(text, args.config)
        if cfg.broker.kind == "redis" and cfg.broker.url is not None:
            check_reachable(cfg.broker.url)  # before a certificate or a socket is made
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_CONFIG)
    setup(cfg.log.level)
    workers = cluster.worker_count(cfg)
    try:
        prepared = app_module.prepare(cfg, workers)
    except SocketInUse as exc:
        return fail(str(exc), EXIT_START)
    except (StartError, CertificateError) as exc:
        return fail(f"cannot start: {exc}", EXIT_START)
    except OSError as exc:  # what prepare() could not blame on a key: still one line
        return fail(f"cannot start: {describe_os_error(exc)}", EXIT_START)
    try:
        # With Redis the supervisor's hub is the node's one Redis client, even for one worker.
        if workers == 1 and cfg.broker.kind == "memory":
            run_loop(single.run_single(prepared, banner, args.config))
        else:
            supervisor = cluster.Supervisor(prepared, args.config, workers, text)
            run_loop(supervisor.run(banner))
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # found only by trying it: Redis at broker.url does not answer
        return fail(f"config error: {exc}", EXIT_CONFIG)
    except OSError as exc:  # a listener that failed once the loop ran: one line, no traceback
        return fail(f"cannot start: {describe_os_error(exc)}", EXIT_START)
    return 0


def describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def cmd_worker(args: argparse.Namespace) -> int:
    from sidecar.server import worker

    return worker.worker_main(
        args.config,
        args.worker_id,
        args.listen_fd,
        args.broker_fd,
        args.control_fd,
        args.stats_fd,
        args.config_fd,
        args.reloaded_config_fd,
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    from sidecar.server.startup import check_paths

    try:
        cfg = config_module.load(args.file)
        notes = check_paths(cfg)  # the directories it needs, as this user sees them
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_CONFIG)
    apps = "generated on first run" if cfg.apps is None else f"{len(cfg.apps)} app(s)"
    print(
        f"{args.file}: ok (tls {cfg.tls.mode}, listen {cfg.listen.host}:{cfg.listen.port}, {apps})"
    )
    for note in notes:
        print(f"  note: {note}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from sidecar.tls.inventory import report

    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_CONFIG)
    text, ok = report(cfg)
    print(text)
    return 0 if ok else EXIT_START


def _read_data(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        return Path(arg[1:]).read_text()
    return arg


def _default_app_id(args: argparse.Namespace) -> str:
    if args.app is not None:
        return args.app
    if args.config is not None:
        cfg = config_module.load(args.config)
        if cfg.apps:
            return cfg.apps[0].id
    return "1"


def cmd_publish(args: argparse.Namespace) -> int:
    from sidecar.api.client import PublishError, SidecarClient

    try:
        data = _read_data(args.data)
        app_id = _default_app_id(args)
        socket_path = args.socket
        if socket_path is None:
            socket_path = (
                config_module.load(args.config).publish.socket if args.config else "./sidecar.sock"
            )
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_CONFIG)
    except OSError as exc:
        return fail(f"cannot read data: {exc}", EXIT_START)
    try:
        with SidecarClient(socket_path, app_id=app_id) as client:
            channels = args.channel.split(",")
            client.trigger(
                channels[0] if len(channels) == 1 else channels,
                args.event,
                data,
                socket_id=args.socket_id,
            )
    except PublishError as exc:
        return fail(f"publish refused: {exc}", EXIT_START)
    except OSError as exc:
        return fail(f"cannot reach {socket_path}: {exc.strerror or exc}", EXIT_START)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sidecar.observe.status import StatusError, fetch_status, format_status, where

    try:
        admin = _load(args.config).admin
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_CONFIG)
    host, port, token = admin.host, admin.port, args.token or admin.token
    if args.admin is not None:
        name, _, number = args.admin.rpartition(":")
        if not number.isdigit():
            return fail(f"--admin: expected HOST:PORT, got {args.admin!r}", EXIT_CONFIG)
        host, port = (name or "127.0.0.1").strip("[]"), int(number)
    if port is None:
        return fail("the admin listener is off (admin.port is null); nothing to ask", EXIT_START)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    try:
        data = fetch_status(host, port, token)
    except StatusError as exc:
        return fail(str(exc), EXIT_START)
    print(format_status(data, where(host, port)))
    return 0 if data.get("ready") else EXIT_START


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar", description=__doc__)
    p.add_argument("--version", action="version", version=f"sidecar {version()}")
    sub = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="`sidecar COMMAND --help` for its options",
    )
    run = sub.add_parser("run", help="start the relay (no config: development defaults)")
    run.add_argument("--config", "-c", help="YAML configuration file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", help="the YAML configuration file to check")
    check.set_defaults(func=cmd_check_config)
    certs = sub.add_parser(
        "certs", help="show each certificate's names, issuer, expiry and next renewal"
    )
    certs.add_argument("--config", "-c", help="YAML configuration file")
    certs.set_defaults(func=cmd_certs)
    pub = sub.add_parser("publish", help="publish an event over the Unix socket")
    pub.add_argument("channel", help="channel name, or several separated by commas")
    pub.add_argument("event", help="event name")
    pub.add_argument("data", help="event data: text or JSON, @FILE, or - for stdin")
    pub.add_argument("--socket", "-s", help="socket path (default ./sidecar.sock or the config's)")
    pub.add_argument("--config", "-c", help="take the socket and app id from this config")
    pub.add_argument("--app", help="app id (default: the first app, or 1)")
    pub.add_argument("--socket-id", help="leave out this connection (the publisher's own)")
    pub.set_defaults(func=cmd_publish)
    status = sub.add_parser("status", help="a short table from a running sidecar's admin port")
    status.add_argument("--config", "-c", help="take the admin address and token from this config")
    status.add_argument("--admin", help="HOST:PORT of the admin listener (default 127.0.0.1:9601)")
    status.add_argument("--token", help="the admin token (default: the config's admin.token)")
    status.set_defaults(func=cmd_status)
    return p


# The supervisor starts each worker as `sidecar _worker ...` (sidecar/server/supervisor.py): a
# command of its own parser, so that `sidecar --help` lists only what a person runs.
WORKER_COMMAND = "_worker"


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"sidecar {WORKER_COMMAND}",
        description="a worker process, started by `sidecar run` with several workers",
    )
    p.add_argument("--config", help="the configuration file the supervisor runs with")
    p.add_argument("--worker-id", type=int, required=True, help="this worker's number")
    p.add_argument("--listen-fd", type=int, required=True, help="the TLS port's socket")
    p.add_argument("--broker-fd", type=int, required=True, help="the pipe to the hub")
    p.add_argument(
        "--control-fd", type=int, required=True, help="the control line to the supervisor"
    )
    p.add_argument("--stats-fd", type=int, help="the line the admin listener asks on")
    p.add_argument("--config-fd", type=int, help="the text of --config, as validated")
    p.add_argument("--reloaded-config-fd", type=int, help="as the latest reload applied it")
    p.set_defaults(func=cmd_worker)
    return p


def version() -> str:
    try:
        return metadata.version("sidecar")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        from sidecar import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_COMMAND]:
        args = worker_parser().parse_args(argv[1:])
    else:
        args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
