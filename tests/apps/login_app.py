"""A small API for the tests and the demo: POST /api/login answers 200 for the password
"right" and 401 for any other, GET / and GET /api/items answer 200, anything else 404.
HTTP/1.1 with keep-alive, one thread per connection. Usage: login_app.py ADDRESS PORT"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/":
            self.answer(200, "the demo API\n")
        elif path == "/api/items":
            self.answer(200, "items: 1, 2, 3\n")
        else:
            self.answer(404, "not found\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(errors="replace"))
        if self.path.split("?")[0] != "/api/login":
            self.answer(404, "not found\n")
        elif form.get("password") == ["right"]:
            self.answer(200, "welcome\n")
        else:
            self.answer(401, "wrong password\n")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    family_server = ThreadingHTTPServer
    if ":" in sys.argv[1]:
        import socket

        class V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        family_server = V6
    family_server((sys.argv[1], int(sys.argv[2])), Api).serve_forever()
