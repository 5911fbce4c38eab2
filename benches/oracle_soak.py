#!/usr/bin/env python3
"""A randomised soak with an oracle: a varied, partly faulty origin and clients that know
what every response must carry, through a release outpost with a disk tier.

Each path /v/<n> answers by a plan drawn from its name: status, Cache-Control, Vary,
validators, framing (length or chunked), its own gzip, Set-Cookie, and for some paths a
fault on half the requests (cut mid-body, a broken chunk, a Content-Length one too long,
a 304 naming another ETag). The body names the path and the request's values of the
fields it varies on, so any complete response can be checked against the bytes the
origin would make for that very request. Clients send random Accept-Language, X-Foo,
Accept-Encoding, Range, Cache-Control and If-None-Match over HTTP/1.1 (keep-alive) and,
if httpx is installed, HTTP/2, each in the clear and over TLS (a self-signed certificate
made with openssl). Midway the disk tier is damaged (a byte flipped in
half the body files) and outpost restarted on it, killed with SIGKILL; for the last sixth
the origin is gone, so what is stored answers (stale where allowed) or a 502/504 does.

A response is bad when it is complete but not the origin's bytes for its request (a
foreign variant, a corrupt or truncated body served as whole), a 206 whose bytes are not
the range it names, a 304 to a healthy path the client's validator does not match, or a
Set-Cookie made for another request (the origin's cookies name the request's nonce; most
come with no-cache="Set-Cookie" or private="set-cookie", which let the rest be stored).
Errors on faulty paths are expected; errors on healthy ones are reported. Loopback only;
stops what it started.

    python3 benches/oracle_soak.py --outpost target/release/outpost [--seconds 60] [--memory-only]

Exits 1 if any response was bad, any healthy path failed, or outpost logged a panic.
"""

import argparse
import gzip
import hashlib
import http.client
import http.server
import importlib.util
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import zlib

CACHE_CONTROLS = ["max-age=60", "no-store", "private", "s-maxage=30", "no-cache", "public",
                  "max-age=0, stale-while-revalidate=30", "", "max-age=60, must-revalidate",
                  "max-age=5, stale-if-error=60", 'max-age=60, no-cache="set-cookie"',
                  "max-age=3, immutable"]
VARIES = ["", "Accept-Language", "X-Foo", "Accept-Language, X-Foo", "*", "accept-language", ""]
FAULTS = [None] * 6 + ["truncate", "badchunk", "dupcl", "etag304"]
PATHS = 300


def plan(path):
    rnd = random.Random(hashlib.sha256(path.encode()).digest())
    p = dict(status=rnd.choice([200] * 8 + [404, 500, 301]), cc=rnd.choice(CACHE_CONTROLS),
             vary=rnd.choice(VARIES), etag=rnd.random() < 0.5, lm=rnd.random() < 0.5,
             size=rnd.choice([0, 10, 1000, 5000, 70000, 200000]), chunked=rnd.random() < 0.4,
             gz=rnd.random() < 0.2, cookie=rnd.random() < 0.2, fault=rnd.choice(FAULTS))
    if p["cookie"]:
        # Mostly the forms that let a shared cache keep the response without the cookie.
        p["cc"] = rnd.choice(['max-age=60, no-cache="Set-Cookie"', 'max-age=60, private="set-cookie"',
                              'max-age=60, no-cache="x-other, set-cookie"', "max-age=60", ""])
    return p


def expected_body(path, get_header, p):
    """The identity bytes the origin sends for `path` to a request whose fields
    `get_header(name)` gives (case-insensitively)."""
    names = [n.strip().lower() for n in p["vary"].split(",") if n.strip() and n.strip() != "*"]
    unit = (path + "|" + ";".join(f"{n}={get_header(n) or ''}" for n in names) + "\n").encode()
    return (unit * (p["size"] // len(unit) + 1))[:p["size"]]


def entity_tag(body):
    return '"' + hashlib.md5(body).hexdigest()[:12] + '"'


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle(self):
        # outpost drops fills it no longer needs: writing on is then a broken pipe.
        try:
            super().handle()
        except OSError:
            pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        path = self.path.split("?")[0]
        p = plan(path)
        body = expected_body(path, self.headers.get, p)
        tag = entity_tag(body)
        fault = p["fault"] if random.random() < 0.5 else None
        if fault == "etag304" and self.headers.get("If-None-Match"):
            return self.not_modified('"other"', "max-age=60")
        if p["etag"] and p["status"] == 200 and self.headers.get("If-None-Match") == tag:
            return self.not_modified(tag, p["cc"])
        self.send_response(p["status"])
        for name, value in (("Cache-Control", p["cc"]), ("Vary", p["vary"])):
            if value:
                self.send_header(name, value)
        if p["etag"]:
            self.send_header("ETag", tag)
        if p["lm"]:
            self.send_header("Last-Modified", "Wed, 01 Jan 2025 00:00:00 GMT")
        if p["cookie"]:
            # Names the request it was made for: a client seeing another's has been leaked.
            self.send_header("Set-Cookie", f"s={self.headers.get('x-nonce', '')}")
        if p["status"] == 301:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Type", "text/plain")
        if p["gz"]:
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        if fault == "dupcl" and not p["chunked"]:
            self.send_header("Content-Length", str(len(body) + 1))
        if fault == "truncate" and not head and len(body) > 10:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "badchunk" and not head and len(body) > 10:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\nzz\r\n" % (len(body) + 5, body))
            self.close_connection = True
            return
        if p["chunked"]:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not head:
                for at in range(0, len(body), 7000):
                    part = body[at:at + 7000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def not_modified(self, tag, cache_control):
        self.send_response(304)
        self.send_header("ETag", tag)
        if cache_control:
            self.send_header("Cache-Control", cache_control)
        self.send_header("Content-Length", "0")
        self.end_headers()


def decode(body, coding):
    if not coding or coding == "identity":
        return body
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)
    if coding == "br":
        try:
            import brotli
        except ImportError:
            return None
        return brotli.decompress(body)
    return None


def random_request(rnd):
    path = "/v/%d" % rnd.randrange(PATHS)
    headers = {}
    for name, choices in (
            ("accept-language", ["en", "de", "fr, en;q=0.5", "", None]),
            ("x-foo", ["a", "b", None]),
            ("accept-encoding", ["gzip", "br", "identity", "gzip;q=0", "*", "gzip, br", "zstd",
                                 "deflate", None]),
            ("range", [None] * 6 + ["bytes=0-99", "bytes=-50", "bytes=100-", "bytes=0-0,5-9",
                                    "bytes=99999999-", "bytes=abc", "bytes=10-5",
                                    "bytes=0-9,900-999", "bytes=3000-3099,-10",
                                    "bytes=-10,0-9"]),
            ("cache-control", [None] * 8 + ["no-cache", "max-age=0", "only-if-cached",
                                            "max-stale", "no-store", "min-fresh=100"])):
        value = rnd.choice(choices)
        if value is not None:
            headers[name] = value
    headers["x-nonce"] = "%016x" % rnd.getrandbits(64)
    validator = rnd.choice([None] * 6 + ["right", '"nope"', "*", 'W/"nope", "x"'])
    if validator == "right":
        validator = entity_tag(expected_body(path, headers.get, plan(path)))
    if validator:
        headers["if-none-match"] = validator
    return path, headers


def judge(path, headers, status, response_headers, body, is_head):
    """'ok', 'bad' or 'skip' for one complete response; `response_headers` lower-cased."""
    p = plan(path)
    want = expected_body(path, headers.get, p)
    validator = headers.get("if-none-match")
    cookie = response_headers.get("set-cookie")
    if cookie is not None and cookie != f"s={headers['x-nonce']}":
        return "bad"  # another client's cookie
    if status == 304:
        refused = validator in ('"nope"', 'W/"nope", "x"') or p["status"] != 200
        return "bad" if refused and p["fault"] is None else "skip"
    if status == 416 and response_headers.get("content-encoding", "identity") != "identity":
        return "bad"  # no content, yet a coding: clients that decode by it fail
    if is_head or status in (416, 412, 502, 504):
        return "skip"
    if status == 206:
        if response_headers.get("content-encoding"):
            return "skip"  # a range of the encoded form
        content_type = response_headers.get("content-type", "")
        if content_type.startswith("multipart/byteranges; boundary="):
            return judge_parts(body, content_type.split("boundary=", 1)[1], want)
        content_range = response_headers.get("content-range", "")
        if not content_range.startswith("bytes "):
            return "bad"
        span, total = content_range[6:].split("/")
        first, last = map(int, span.split("-"))
        return "ok" if body == want[first:last + 1] and int(total) == len(want) else "bad"
    if status != p["status"]:
        return "bad"
    decoded = decode(body, response_headers.get("content-encoding"))
    if decoded is None:
        return "skip"
    return "ok" if decoded == want else "bad"


def judge_parts(body, boundary, want):
    """RFC 9110 §14.6: each part of a multipart/byteranges body holds the bytes its
    Content-Range names, and the body ends with the closing delimiter."""
    delimiter = b"\r\n--" + boundary.encode()
    if not body.endswith(delimiter + b"--\r\n"):
        return "bad"
    pieces = body[:-len(delimiter) - 4].split(delimiter)
    if pieces[0] != b"" or len(pieces) < 2:
        return "bad"
    for piece in pieces[1:]:
        head, sep, content = piece.partition(b"\r\n\r\n")
        spans = [line[len(b"content-range: bytes "):] for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-range: bytes ")]
        if not sep or len(spans) != 1:
            return "bad"
        span, total = spans[0].decode().split("/")
        first, last = map(int, span.split("-"))
        if content != want[first:last + 1] or int(total) != len(want):
            return "bad"
    return "ok"


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "bad": 0, "skip": 0, "faulty-path errors": 0,
                       "healthy-path errors": 0}
        self.examples = []

    def add(self, verdict, example=None):
        with self.lock:
            self.counts[verdict] += 1
            if example and len(self.examples) < 10:
                self.examples.append(example)


def http1_client(port, tls, seed, until, tally):
    rnd = random.Random(seed)
    conn = None
    while time.time() < until:
        path, headers = random_request(rnd)
        method = "HEAD" if rnd.random() < 0.1 else "GET"
        try:
            conn = conn or (
                http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                            context=ssl._create_unverified_context())
                if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if (response.getheader("connection") or "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as err:
            if conn:
                conn.close()
            conn = None
            healthy = plan(path)["fault"] is None
            tally.add("healthy-path errors" if healthy else "faulty-path errors",
                      ("http/1.1 error", method, path, headers, repr(err)) if healthy else None)
            continue
        response_headers = {k.lower(): v for k, v in response.getheaders()}
        verdict = judge(path, headers, response.status, response_headers, body, method == "HEAD")
        tally.add(verdict, ("http/1.1", method, path, headers, response.status,
                            response_headers, body[:60]) if verdict == "bad" else None)


def http2_client(port, tls, seed, until, tally):
    import asyncio
    import httpx

    async def one(client, rnd):
        path, headers = random_request(rnd)
        try:
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
            async with client.stream("GET", url, headers=headers) as response:
                # Raw bytes: judged as the HTTP/1.1 ones are, not as httpx decodes them.
                body = b"".join([chunk async for chunk in response.aiter_raw()])
        except httpx.HTTPError as err:
            healthy = plan(path)["fault"] is None
            tally.add("healthy-path errors" if healthy else "faulty-path errors",
                      ("h2 error", path, headers, repr(err)) if healthy else None)
            return
        response_headers = {k.lower(): v for k, v in response.headers.items()}
        verdict = judge(path, headers, response.status_code, response_headers, body, False)
        tally.add(verdict, ("h2", path, headers, response.status_code, response_headers,
                            body[:60]) if verdict == "bad" else None)

    async def run():
        rnd = random.Random(seed)
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(http1=False, http2=True, timeout=20, limits=limits,
                                     verify=False) as client:
            while time.time() < until:
                await asyncio.gather(*(one(client, rnd) for _ in range(50)))

    asyncio.run(run())


def damage(cache_dir, rnd):
    """Flips one byte in half the body files of the disk tier."""
    files = [os.path.join(d, f) for sub in ("blobs", "packs")
             for d, _, names in os.walk(os.path.join(cache_dir, sub)) for f in names]
    damaged = 0
    for path in rnd.sample(files, len(files) // 2):
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "r+b") as f:
            at = rnd.randrange(size)
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ 0x5A]))
        damaged += 1
    return damaged, len(files)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outpost", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--memory-only", action="store_true",
                        help="no disk tier (bodies told apart by XXH3, not blake3); the "
                             "restart then starts empty and nothing is damaged")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="oracle-soak-")
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port, tls_port = free_port(), free_port()
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    cache_dir = os.path.join(work, "disk")
    log = open(os.path.join(work, "outpost.log"), "ab")
    env = dict(os.environ, OUTPOST_LOG__ACCESS_LOG="false", RUST_BACKTRACE="1")

    def start():
        process = subprocess.Popen(
            [args.outpost, "serve", "--listen", f"127.0.0.1:{port}", "--origin",
             f"http://127.0.0.1:{origin.server_address[1]}",
             *([] if args.memory_only else ["--cache-dir", cache_dir]),
             "--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert", cert, "--tls-key", key],
            stdout=log, stderr=log, env=env)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process
            except OSError:
                time.sleep(0.1)
        sys.exit("outpost did not start")

    def load(seconds, phase_seed):
        until = time.time() + seconds
        # Half the HTTP/1.1 clients over TLS; HTTP/2 in the clear (h2c) and over TLS (ALPN).
        threads = [threading.Thread(target=http1_client,
                                    args=(tls_port if i % 2 else port, i % 2 == 1,
                                          phase_seed + i, until, tally))
                   for i in range(args.clients)]
        if all(importlib.util.find_spec(name) for name in ("httpx", "h2")):
            for i, (at, tls) in enumerate(((port, False), (tls_port, True))):
                threads.append(threading.Thread(target=http2_client,
                                                args=(at, tls, phase_seed + 99 + i, until, tally)))
        else:
            print("httpx[http2] not installed: HTTP/1.1 clients only")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    tally = Tally()
    outpost = start()
    try:
        load(args.seconds / 2, 1000)
        outpost.send_signal(signal.SIGKILL)
        outpost.wait()
        if args.memory_only:
            print("killed outpost (memory only: it restarts empty)")
        else:
            damaged, files = damage(cache_dir, random.Random(7))
            print(f"killed outpost; flipped a byte in {damaged} of {files} disk-tier body files")
        outpost = start()
        load(args.seconds / 3, 2000)
        # The origin goes away (connections refused): what is stored may be served, stale
        # where allowed, and must still be the right bytes; the rest is a 502 or 504.
        origin.shutdown()
        origin.server_close()
        print("origin stopped")
        load(args.seconds / 6, 3000)
    finally:
        outpost.terminate()
        outpost.wait()
        origin.shutdown()
        log.close()
    logged = open(os.path.join(work, "outpost.log"), errors="replace").read()
    panics = logged.count("panicked")
    print(tally.counts, f"panics={panics}")
    for example in tally.examples:
        print("  ", example)
    shutil.rmtree(work)
    failed = tally.counts["bad"] or tally.counts["healthy-path errors"] or panics
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
