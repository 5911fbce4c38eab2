#!/usr/bin/env python3
"""Cold and warm installs through outpost's package mirror against installs straight from
the upstream, with real pip, cargo and npm (issue 16's benchmark).

Builds registry-like fixtures for a fixed set of packages (PyPI: an index host and a TLS
files host; crates.io: a sparse index whose `dl` is a TLS host; npm: one TLS registry),
each answering after --latency to stand for a remote upstream, and starts outpost with
config/mirror.toml (only the upstream addresses swapped). Then, each with fresh client
caches (a new machine):

  direct   the client talks to the fixtures itself
  cold     through outpost, nothing cached
  warm     through outpost again (a second machine): what reached the upstream is counted

    python3 benches/mirror_clients.py --outpost target/release/outpost [--packages 20]

Prints seconds per run and the requests and bytes each upstream served during the warm run.
"""

import argparse
import gzip
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
import base64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fixture:
    """A static HTTP(S) server of path -> (content type, body) that counts what it serves."""

    def __init__(self, latency, tls_files=None):
        self.routes = {}
        self.requests = 0
        self.bytes = 0
        self.port = free_port()
        fixture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                time.sleep(latency)
                path = self.path.split("?")[0]
                fixture.requests += 1
                route = fixture.routes.get(path)
                if route is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                ctype, body = route
                etag = '"%s"' % hashlib.sha256(body).hexdigest()[:16]
                if self.headers.get("if-none-match") == etag:
                    self.send_response(304)
                    self.send_header("etag", etag)
                    self.end_headers()
                    return
                fixture.bytes += len(body)
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.send_header("etag", etag)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = Listener(("127.0.0.1", self.port), Handler)
        if tls_files:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls_files)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = ("https://localhost:%d" if tls_files else "http://127.0.0.1:%d") % self.port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self):
        self.requests = 0
        self.bytes = 0


class Listener(http.server.ThreadingHTTPServer):
    # socketserver listens with a backlog of 5, and a TLS fixture does each handshake in
    # its accept loop: a client opening several connections at once (cargo's parallel
    # downloads through outpost) overflowed it, and the dropped SYNs came back after the
    # kernel's 1 s retransmit. Registries sit behind servers with backlogs in the hundreds.
    request_queue_size = 128


def payload(size, seed):
    return random.Random(seed).randbytes(size)


def wheel(name, size):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        def put(path, data):
            z.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), data)
        put(f"{name}/__init__.py", "VALUE = 1\n")
        put(f"{name}/data.bin", payload(size, name))
        info = f"{name}-1.0.dist-info"
        put(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        put(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        put(f"{info}/RECORD", "")
    return buf.getvalue()


def tar_gz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def build(args, tls):
    pypi_index, pypi_files = Fixture(args.latency), Fixture(args.latency, tls)
    crates_index, crates_files = Fixture(args.latency), Fixture(args.latency, tls)
    npm = Fixture(args.latency, tls)
    names = [f"bench{i:03d}" for i in range(args.packages)]
    for name in names:
        whl = wheel(name, args.size)
        path = f"/packages/{name}/{name}-1.0-py3-none-any.whl"
        pypi_files.routes[path] = ("application/octet-stream", whl)
        link = f"{pypi_files.url}{path}#sha256={hashlib.sha256(whl).hexdigest()}"
        page = f'<html><body><a href="{link}">{name}-1.0-py3-none-any.whl</a></body></html>'
        pypi_index.routes[f"/simple/{name}/"] = ("text/html", page.encode())

        crate_name = f"bench-crate-{name[5:]}"
        manifest = f'[package]\nname = "{crate_name}"\nversion = "1.0.0"\nedition = "2021"\n'
        crate = tar_gz([
            (f"{crate_name}-1.0.0/Cargo.toml", manifest.encode()),
            (f"{crate_name}-1.0.0/src/lib.rs", b"pub fn f() {}\n"),
            (f"{crate_name}-1.0.0/data.bin", payload(args.size, crate_name)),
        ])
        crates_files.routes[f"/crates/{crate_name}/1.0.0/download"] = ("application/gzip", crate)
        line = {"name": crate_name, "vers": "1.0.0", "deps": [], "features": {},
                "cksum": hashlib.sha256(crate).hexdigest(), "yanked": False}
        index_path = f"/{crate_name[:2]}/{crate_name[2:4]}/{crate_name}"
        crates_index.routes[index_path] = ("text/plain", (json.dumps(line) + "\n").encode())

        npm_name = f"bench-npm-{name[5:]}"
        tgz = tar_gz([
            ("package/package.json", json.dumps({"name": npm_name, "version": "1.0.0"}).encode()),
            ("package/data.bin", payload(args.size, npm_name)),
        ])
        tarball = f"/{npm_name}/-/{npm_name}-1.0.0.tgz"
        npm.routes[tarball] = ("application/octet-stream", tgz)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
        document = {"name": npm_name, "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": {
            "name": npm_name, "version": "1.0.0",
            "dist": {"tarball": npm.url + tarball, "integrity": integrity}}}}
        npm.routes[f"/{npm_name}"] = ("application/json", json.dumps(document).encode())
    config = {"dl": crates_files.url + "/crates", "api": crates_files.url}
    crates_index.routes["/config.json"] = ("application/json", json.dumps(config).encode())
    return names, {"pypi index": pypi_index, "pypi files": pypi_files,
                   "crates index": crates_index, "crates files": crates_files, "npm": npm}


def timed(command, cwd=None, env=None):
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed:\n{result.stdout}\n{result.stderr}")
    return time.monotonic() - started


def pip_run(index, names, ca, work):
    # This machine points every CA-bundle variable at the system bundle; the fixture's CA
    # must win for the direct runs.
    env = dict(os.environ, PIP_CONFIG_FILE="/dev/null", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_CERT=ca, REQUESTS_CA_BUNDLE=ca, SSL_CERT_FILE=ca)
    for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        env.pop(key, None)
    target = tempfile.mkdtemp(dir=work)
    return timed([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir",
                  "--cert", ca, "--index-url", index, "--target", target]
                 + [f"{n}==1.0" for n in names], env=env)


def cargo_run(registry, names, ca, work):
    project = tempfile.mkdtemp(dir=work)
    os.makedirs(f"{project}/src")
    deps = "".join(f'bench-crate-{n[5:]} = "1.0.0"\n' for n in names)
    with open(f"{project}/Cargo.toml", "w") as f:
        f.write(f'[package]\nname = "b"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\n{deps}')
    open(f"{project}/src/lib.rs", "w").close()
    home = tempfile.mkdtemp(dir=work)
    with open(f"{home}/config.toml", "w") as f:
        f.write(f'[source.crates-io]\nreplace-with = "m"\n[source.m]\nregistry = "sparse+{registry}"\n')
    env = dict(os.environ, CARGO_HOME=home, CARGO_HTTP_CAINFO=ca)
    return timed(["cargo", "fetch"], cwd=project, env=env)


def npm_run(registry, names, ca, work):
    project = tempfile.mkdtemp(dir=work)
    deps = {f"bench-npm-{n[5:]}": "1.0.0" for n in names}
    with open(f"{project}/package.json", "w") as f:
        json.dump({"name": "b", "version": "1.0.0", "private": True, "dependencies": deps}, f)
    with open(f"{project}/.npmrc", "w") as f:
        f.write(f"registry={registry}\ncafile={ca}\n")
    env = dict(os.environ, npm_config_userconfig=f"{project}/.npmrc", npm_config_update_notifier="false",
               NODE_EXTRA_CA_CERTS=ca)
    cache = tempfile.mkdtemp(dir=work)
    return timed(["npm", "install", "--no-audit", "--no-fund", "--cache", cache], cwd=project, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outpost", default=os.path.join(ROOT, "target/release/outpost"))
    parser.add_argument("--packages", type=int, default=20)
    parser.add_argument("--size", type=int, default=200_000, help="payload bytes per package")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds per upstream answer")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mirror-bench-")
    try:
        # A CA and a leaf for localhost (rustls refuses a CA certificate as a server's).
        ca, ca_key, key, csr, leaf = (f"{work}/{n}" for n in ("ca.pem", "ca.key", "key.pem", "leaf.csr", "leaf.pem"))
        with open(f"{work}/ext", "w") as f:
            f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
        for command in (
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=bench CA", "-keyout", ca_key, "-out", ca],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", key, "-out", csr],
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "1", "-extfile", f"{work}/ext", "-out", leaf],
        ):
            subprocess.run(command, check=True, capture_output=True)
        cert = ca
        names, fixtures = build(args, (leaf, key))
        config = open(os.path.join(ROOT, "config/mirror.toml")).read()
        for upstream, fixture in [("https://pypi.org", "pypi index"),
                                  ("https://files.pythonhosted.org", "pypi files"),
                                  ("https://index.crates.io", "crates index"),
                                  ("https://static.crates.io", "crates files"),
                                  ("https://registry.npmjs.org", "npm")]:
            config = config.replace(f'"{upstream}"', f'"{fixtures[fixture].url}"')
        port = free_port()
        config += f'\n[log]\naccess_log = false\n'
        config = config.replace('listen = "0.0.0.0:8080"', f'listen = "127.0.0.1:{port}"')
        config = config.replace('dir = "/var/cache/outpost"', f'dir = "{work}/cache"')
        config = config.replace("fsync = true", "fsync = false")
        config = config.replace("[upstream]", f'[upstream]\nca_file = "{cert}"')
        with open(f"{work}/mirror.toml", "w") as f:
            f.write(config)
        server = subprocess.Popen([args.outpost, "serve", "--config", f"{work}/mirror.toml"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            mirror = f"http://127.0.0.1:{port}"
            clients = [
                ("pip install", pip_run, fixtures["pypi index"].url + "/simple/", mirror + "/pypi/simple/"),
                ("cargo fetch", cargo_run, fixtures["crates index"].url + "/", mirror + "/crates/"),
                ("npm install", npm_run, fixtures["npm"].url + "/", mirror + "/npm/"),
            ]
            print(f"{args.packages} packages of ~{args.size // 1000} KB each, upstream latency "
                  f"{args.latency * 1000:.0f} ms per answer")
            print(f"{'client':<12} {'direct':>8} {'cold':>8} {'warm':>8}   upstream during warm")
            for label, run, direct_url, mirror_url in clients:
                direct = run(direct_url, names, cert, work)
                cold = run(mirror_url, names, cert, work)
                for fixture in fixtures.values():
                    fixture.reset()
                warm = run(mirror_url, names, cert, work)
                served = sum(f.requests for f in fixtures.values())
                served_bytes = sum(f.bytes for f in fixtures.values())
                print(f"{label:<12} {direct:7.2f}s {cold:7.2f}s {warm:7.2f}s   "
                      f"{served} requests, {served_bytes} body bytes")
        finally:
            server.terminate()
            server.wait()
    finally:
        for fixture in locals().get("fixtures", {}).values():
            fixture.server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
