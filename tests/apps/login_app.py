"""A small API for the tests and the demo: POST /api/login answers 200 for the password
"right" and 401 for any other, GET / and GET /api/items answer 200, GET /_count answers the
number of login attempts so far, anything else 404.
HTTP/1.1 with keep-alive, one thread per connection. Usage: login_app.py ADDRESS PORT"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

# Login attempts that reached the application (GET /_count reads it: the benchmark counts
# what a filter let through).
LOGINS = [0]
LOGINS_LOCK = threading.Lock()


class Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a flood of connections would fill it and stall
    # everyone else at the SYN, which real servers (NGINX: 511) do not do.
    request_queue_size = 128


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Each response in one write, without Nagle: headers and body written apart would wait
    # on the client's delayed ACK (40 ms) on a keep-alive connection.
    wbufsize = 65536
    disable_nagle_algorithm = True

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
        elif path == "/_count":
            with LOGINS_LOCK:
                self.answer(200, f"{LOGINS[0]}\n")
        else:
            self.answer(404, "not found\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(errors="replace"))
        if self.path.split("?")[0] != "/api/login":
            self.answer(404, "not found\n")
            return
        with LOGINS_LOCK:
            LOGINS[0] += 1
        if form.get("password") == ["right"]:
            self.answer(200, "welcome\n")
        else:
            self.answer(401, "wrong password\n")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    family_server = Server
    if ":" in sys.argv[1]:
        import socket

        class V6(Server):
            address_family = socket.AF_INET6

        family_server = V6
    family_server((sys.argv[1], int(sys.argv[2])), Api).serve_forever()
