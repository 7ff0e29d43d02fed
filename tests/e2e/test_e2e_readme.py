"""README's examples, run as a new user would paste them, against the real process."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys

import aiohttp
import pytest

from tests.support.process import ROOT, SidecarProcess

pytestmark = pytest.mark.e2e


def readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"one {language} block with {containing!r} in README.md"
    return found[0]


async def test_python_server_library_example_triggers_over_tls(sidecar: SidecarProcess) -> None:
    """The development certificate, trusted the way README shows (the library pins its own
    CA bundle); only the app's values and the port are the test's."""
    app = sidecar.app
    code = (
        readme_block("python", "TrustDevelopmentCertificate")
        .replace('app_id="1"', f'app_id="{app["id"]}"')
        .replace('"APP_KEY"', json.dumps(app["key"]))
        .replace('"APP_SECRET"', json.dumps(app["secret"]))
        .replace("port=8443", f"port={sidecar.port}")
    )
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(sidecar.ws_url(), ssl=ctx)
        await ws.receive_str(timeout=5)
        await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "orders"}})
        await ws.receive_str(timeout=5)
        # Run from the sidecar's folder, where README's relative certs/localhost.crt is.
        ran = subprocess.run(
            [sys.executable, "-c", code],
            cwd=sidecar.workdir,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ran.returncode == 0, ran.stderr
        frame = json.loads(await ws.receive_str(timeout=5))
        assert (frame["event"], json.loads(frame["data"])) == ("created", {"id": 42})
        await ws.close()


def test_ruby_server_library_example_names_the_development_certificate() -> None:
    """Not run here (the gem is not installable on this machine): at least the values a user
    replaces are the ones the Python example and the banner use."""
    code = readme_block("ruby", "Pusher::Client.new")
    assert 'add_trust_ca("certs/localhost.crt")' in code
    assert "use_tls: true" in code and "port: 8443" in code and 'host: "localhost"' in code
