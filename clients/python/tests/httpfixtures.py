"""Small HTTP servers on loopback for what the example resource server does not do: a token
endpoint that answers 400 ``use_dpop_nonce`` (RFC 9449 section 8) and redirects within and
out of an origin. They record every request's headers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple

from conftest import jwt_part

#: The nonce the token endpoint wants.
AS_NONCE = "as-nonce-1"


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.other = ""  # base URL of another origin, for /away
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, status: int, body: object, headers: Dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append((self.command, self.path, headers, body))
        if self.path == "/token":
            proof = headers.get("dpop")
            if proof and jwt_part(proof, 1).get("nonce") == AS_NONCE:
                self.answer(200, {"access_token": "t", "token_type": "DPoP"}, {})
            else:
                self.answer(
                    400, {"error": "use_dpop_nonce"}, {"DPoP-Nonce": AS_NONCE, "Set-Cookie": "as=1"}
                )
        elif self.path == "/away":
            self.answer(302, {}, {"Location": self.server.other + "/landed"})
        elif self.path == "/here":
            self.answer(307, {}, {"Location": "/landed?after=redirect"})
        else:
            self.answer(200, {"path": self.path}, {})

    do_GET = handle_any
    do_POST = handle_any
