#!/usr/bin/env python3
"""A tiny backend for trying Portcullis: answers every request with JSON
describing it - method, path, headers, and the identity the gateway passed
on (X-Userinfo / X-ID-Token decoded from base64).

    python3 examples/echo.py [PORT]        # default 9081, loopback only
"""
import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def decoded(value):
    try:
        return json.loads(base64.b64decode(value))
    except (ValueError, TypeError):
        return None


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = {
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "identity": {
                name: decoded(self.headers[name])
                for name in ("X-Userinfo", "X-ID-Token")
                if self.headers.get(name)
            },
        }
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

    def log_message(self, fmt, *args):
        sys.stderr.write("echo: " + fmt % args + "\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9081
    print(f"echo backend on http://127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
