"""A tiny JSON server for examples/http.yaml. Prints {"port": N} once it listens on 127.0.0.1."""
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/greeting":
            name = parse_qs(url.query).get("name", ["world"])[0]
            self.reply(200, {"message": f"hello, {name}"})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/orders":
            order = json.loads(body or b"{}")
            order["id"] = str(uuid.uuid4())[:8]
            order["greeting"] = self.headers.get("X-Greeting")
            self.reply(201, order)
        elif self.path == "/shutdown":
            self.reply(200, {"stopping": True})
            threading.Thread(target=self.server.shutdown).start()
        else:
            self.reply(404, {"error": "not found"})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
idle_stop = threading.Timer(60, server.shutdown)
idle_stop.daemon = True
idle_stop.start()
server.serve_forever()
sys.exit(0)
