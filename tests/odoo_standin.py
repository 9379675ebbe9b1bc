"""A tiny stand-in for an Odoo 17 HTTP server, for the health tests (Odoo cannot be installed here).

It is NOT Odoo. It imitates, on a free loopback port, exactly the Odoo 17 behaviour odoops's health
checks rely on:

- ``GET /web/health`` -> 200, ``Content-Type: application/json``, ``Cache-Control: no-store``, body
  ``{"status": "pass"}`` (odoo/addons/web/controllers/webclient.py ``health()``, Odoo 15+; it does not
  touch the database);
- ``POST /web/webclient/version_info`` (JSON-RPC, ``type='json'``, ``auth='none'``) -> ``{"jsonrpc":
  "2.0", "id": <id>, "result": {"server_version": "17.0", "server_version_info": [17, 0, 0, "final",
  0, ""], "server_serie": "17.0", "protocol_version": 1}}`` (odoo.service.common.exp_version());
- XML-RPC ``/xmlrpc/2/common``: ``version()`` (the same dict) and ``authenticate(db, login, password,
  user_agent_env)`` -> the user's uid, or ``False`` for wrong credentials, or a Fault when the
  database does not exist (as Odoo's registry load fails);
- anything else -> 404 (Odoo's werkzeug NotFound).

Knobs for fault tests: ``health_status`` (e.g. 503), ``delay`` seconds before every answer.
"""

from __future__ import annotations

import json
import threading
import time
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION_INFO = {
    "server_version": "17.0",
    "server_version_info": [17, 0, 0, "final", 0, ""],
    "server_serie": "17.0",
    "protocol_version": 1,
}


class OdooStandin:
    """``with OdooStandin(databases={"acme": {"admin": ("secret", 2)}}) as odoo: odoo.url``"""

    def __init__(self, databases: dict[str, dict[str, tuple[str, int]]] | None = None, health_status: int = 200,
                 delay: float = 0.0) -> None:
        self.databases = databases or {}
        self.health_status = health_status
        self.delay = delay
        self.requests: list[tuple[str, str]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                standin.requests.append(("GET", self.path))
                time.sleep(standin.delay)
                if self.path.split("?")[0] == "/web/health":
                    status = standin.health_status
                    body = {"status": "pass"} if status == 200 else {"status": "fail"}
                    self._send(status, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b"<h1>Not Found</h1>", "text/html; charset=utf-8")

            def do_POST(self) -> None:  # noqa: N802
                standin.requests.append(("POST", self.path))
                time.sleep(standin.delay)
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/web/webclient/version_info":
                    request_id = json.loads(data or b"{}").get("id")
                    body = {"jsonrpc": "2.0", "id": request_id, "result": VERSION_INFO}
                    self._send(200, json.dumps(body).encode(), "application/json")
                elif self.path == "/xmlrpc/2/common":
                    self._send(200, standin._xmlrpc_common(data), "text/xml")
                else:
                    self._send(404, b"<h1>Not Found</h1>", "text/html; charset=utf-8")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def _xmlrpc_common(self, data: bytes) -> bytes:
        params, method = xmlrpc.client.loads(data)
        if method == "version":
            return xmlrpc.client.dumps((VERSION_INFO,), methodresponse=True, allow_none=True).encode()
        if method == "authenticate":
            db, login, password = params[:3]
            if db not in self.databases:
                fault = xmlrpc.client.Fault(1, f'Traceback...\npsycopg2.OperationalError: database "{db}" does not exist')
                return xmlrpc.client.dumps(fault, methodresponse=True).encode()
            user = self.databases[db].get(login)
            uid = user[1] if user and user[0] == password else False
            return xmlrpc.client.dumps((uid,), methodresponse=True, allow_none=True).encode()
        fault = xmlrpc.client.Fault(1, f"The method {method!r} does not exist")
        return xmlrpc.client.dumps(fault, methodresponse=True).encode()

    def __enter__(self) -> OdooStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
