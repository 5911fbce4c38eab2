#!/usr/bin/env python3
"""A slow origin that sends its bodies a step at a time, for measuring how soon a client
gets its first byte: every path answers SIZE_MIB MiB of a recognisable pattern (byte i is
i % 251), STEP_KIB KiB every INTERVAL_MS ms, with Content-Length, `Cache-Control:
max-age=600` and a strong ETag. A single `Range: bytes=a-b` (or `a-`) gets a 206 of those
bytes, sent the same way, unless an If-Range names another entity tag. With SENT_LOG set,
each request appends `path bytes-sent range` to that file when it ends (its client may
hang up before the body's end). With BODY_FILE set, every path answers that file's bytes
instead of the pattern, and with CONTENT_TYPE (CONTENT_ENCODING) set, says it is that type
(coded so: the file is then already coded). Loopback only.

    SIZE_MIB=16 STEP_KIB=256 INTERVAL_MS=50 python3 benches/trickle_origin.py PORT
"""
import http.server
import os
import re
import socketserver
import sys
import time

STEP = int(os.environ.get("STEP_KIB", "256")) << 10
INTERVAL = int(os.environ.get("INTERVAL_MS", "50")) / 1000
SENT_LOG = os.environ.get("SENT_LOG")
if os.environ.get("BODY_FILE"):
    with open(os.environ["BODY_FILE"], "rb") as body_file:
        BODY = body_file.read()
    SIZE = len(BODY)
else:
    SIZE = int(os.environ.get("SIZE_MIB", "16")) << 20
    BODY = bytes(i % 251 for i in range(SIZE))
ETAG = '"trickle-1"'


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        first, last, status = 0, SIZE - 1, 200
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        # RFC 9110 §13.1.5: a range only while If-Range names this representation.
        if_range = self.headers.get("If-Range", ETAG)
        if asked and int(asked.group(1)) < SIZE and if_range == ETAG:
            first = int(asked.group(1))
            last = min(int(asked.group(2) or SIZE - 1), SIZE - 1)
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(last - first + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{SIZE}")
        self.send_header("Cache-Control", "max-age=600")
        if os.environ.get("CONTENT_TYPE"):
            self.send_header("Content-Type", os.environ["CONTENT_TYPE"])
        if os.environ.get("CONTENT_ENCODING"):
            self.send_header("Content-Encoding", os.environ["CONTENT_ENCODING"])
        self.send_header("ETag", ETAG)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        sent = 0
        try:
            for start in range(first, last + 1, STEP):
                piece = BODY[start:min(start + STEP, last + 1)]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                time.sleep(INTERVAL)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if SENT_LOG:
                with open(SENT_LOG, "a") as log:
                    log.write(f"{self.path} {sent} {self.headers.get('Range', '-')}\n")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
