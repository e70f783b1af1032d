"""playbooks/alert.yml: a failing webhook is really retried, a still-failing one is named in the play output, and
the run never fails because of it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers.fleet import free_port


def _flaky_server(failures: int):
    """A webhook that answers 500 ``failures`` times, then 200; returns (server, url, hits)."""
    hits: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hits.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(500 if len(hits) <= failures else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook", hits


def test_webhooks_are_retried_and_failures_named(ansible_env, tmp_path):
    server, flaky, hits = _flaky_server(failures=2)
    refused = f"http://127.0.0.1:{free_port()}/nobody-listens"
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
             "spot.migration.alert", "-e", json.dumps({"alert_webhooks": [flaky, refused], "alert_text": "test alert"})],
            env=ansible_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, check=False)
    finally:
        server.shutdown()
        server.server_close()
    out = result.stdout
    assert result.returncode == 0, out[-4000:]           # an alert never fails the run
    assert len(hits) == 3 and hits[-1]["text"] == "test alert", hits   # 500, 500, then 200: retried until it got through
    assert out.count("FAILED - RETRYING") >= 3 + 2, out[-4000:]      # the refused one: every retry shown
    assert f"webhook {refused} failed after 3 tries" in out, out[-4000:]
    assert f"webhook {flaky} failed" not in out
