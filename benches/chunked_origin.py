#!/usr/bin/env python3
"""A slow origin that sends its bodies chunked (no Content-Length), as origins that build
their responses as they send them do: `/t/<size>[k|m]/<anything>` answers, after DELAY_MS,
`<size>` bytes of text (`text/plain`, `Cache-Control: max-age=600`) in 16 KiB chunks.
Loopback only.

    python3 benches/chunked_origin.py PORT   # DELAY_MS=50 by default
"""
import http.server
import os
import socketserver
import sys
import time

DELAY = int(os.environ.get("DELAY_MS", "50")) / 1000
LINE = b"outpost chunked origin: a line of compressible text, much like a script bundle.\n"


def size_of(text):
    scale = {"k": 1 << 10, "m": 1 << 20}.get(text[-1:].lower(), 1)
    return int(text.rstrip("kKmM")) * scale


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) < 3 or parts[1] != "t":
            self.send_error(404)
            return
        size = size_of(parts[2])
        time.sleep(DELAY)
        body = (LINE * (size // len(LINE) + 1))[:size]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Cache-Control", "max-age=600")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, size, 16 << 10):
            chunk = body[start:start + (16 << 10)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
