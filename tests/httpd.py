#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A small threaded HTTP/1.1 file server for tests/test_fetch.c (stdlib only).

Serves --root with Content-Length, ETag (size + mtime), Last-Modified; answers If-None-Match /
If-Modified-Since with 304 and Range (bytes=N- / bytes=N-M, If-Range honoured) with 206 + Content-Range.
Writes the port it bound on 127.0.0.1 to --port-file and one JSON line per request to --log (method, path,
range, status, request headers: the token is in there on purpose, tests assert it was sent).

Test knobs:
  --require-token T       requests must carry "<--token-header>: T" (default header PRIVATE-TOKEN), else 401
  --require-basic U:P     requests must carry basic auth U:P, else 401 with WWW-Authenticate
  --drop-after N          the first GET of each path closes the connection after N body bytes
  --slow BPS              bodies trickle at BPS bytes/s (so a test can kill -9 the server mid-transfer)
  --no-range              ignore Range (answer 200 with the whole file)
  /_redirect/same/P       302 to /P on this server
  /_redirect/other/P      302 to http://localhost:PORT/P (another host name: clients must drop credentials)
  /_redirect/query/P      302 to /P?--redirect-query (a signed URL, as object stores redirect to)
"""

import argparse
import base64
import email.utils
import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hydra-test-httpd/1"

    def log_message(self, fmt, *args):  # keep stderr quiet; the JSON log is the record
        pass

    def record(self, status, rng=None):
        srv = self.server
        line = json.dumps({
            "method": self.command,
            "path": self.path,
            "range": rng if rng is not None else self.headers.get("Range"),
            "status": status,
            "headers": {k: v for k, v in self.headers.items()},
        })
        with srv.log_lock:
            with open(srv.opts.log, "a") as f:
                f.write(line + "\n")

    def reply_empty(self, status, extra=None):
        self.record(status)
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply_text(self, status, text, extra=None):
        body = text.encode()
        self.record(status)
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def authorized(self):
        o = self.server.opts
        if o.require_token is not None and self.headers.get(o.token_header) != o.require_token:
            return False
        if o.require_basic is not None:
            want = "Basic " + base64.b64encode(o.require_basic.encode()).decode()
            if self.headers.get("Authorization") != want:
                return False
        return True

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        o = self.server.opts
        path = urllib.parse.urlsplit(self.path).path
        if not self.authorized():
            extra = {"WWW-Authenticate": 'Basic realm="test"'} if o.require_basic else None
            self.reply_text(401, "unauthorized\n", extra)
            return

        if path.startswith("/_redirect/same/"):
            self.reply_empty(302, {"Location": "/" + path[len("/_redirect/same/"):]})
            return
        if path.startswith("/_redirect/query/"):
            target = "/" + path[len("/_redirect/query/"):] + "?" + o.redirect_query
            self.reply_empty(302, {"Location": target})
            return
        if path.startswith("/_redirect/other/"):
            port = self.server.server_address[1]
            self.reply_empty(302, {"Location": "http://localhost:%d/%s" % (port, path[len("/_redirect/other/"):])})
            return

        rel = urllib.parse.unquote(path).lstrip("/")
        full = os.path.realpath(os.path.join(o.root, rel))
        root = os.path.realpath(o.root)
        if not full.startswith(root + os.sep) or not os.path.isfile(full):
            self.reply_text(404, "not found\n")
            return

        st = os.stat(full)
        size = st.st_size
        etag = '"%x-%x"' % (size, st.st_mtime_ns)
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        validators = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes"}

        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        if inm is not None:
            if etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*":
                self.reply_empty(304, validators)
                return
        elif ims is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                since = None
            if since is not None and int(st.st_mtime) <= since:
                self.reply_empty(304, validators)
                return

        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not o.no_range and (if_range is None or if_range in (etag, last_modified)):
            spec = rng.strip()
            if not spec.startswith("bytes=") or "," in spec:
                self.reply_text(416, "bad range\n", {"Content-Range": "bytes */%d" % size})
                return
            a, _, b = spec[len("bytes="):].partition("-")
            try:
                start = int(a)
                end = int(b) if b else size - 1
            except ValueError:
                self.reply_text(416, "bad range\n", {"Content-Range": "bytes */%d" % size})
                return
            if start >= size or end < start:
                self.reply_text(416, "range not satisfiable\n", {"Content-Range": "bytes */%d" % size})
                return
            end = min(end, size - 1)
            status = 206

        length = end - start + 1 if size > 0 else 0
        self.record(status, rng)
        self.send_response(status)
        for k, v in validators.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return

        limit = length
        drop = False
        if o.drop_after is not None:
            with self.server.state_lock:
                if path not in self.server.dropped:
                    self.server.dropped.add(path)
                    drop = True
                    limit = min(length, o.drop_after)

        with open(full, "rb") as f:
            if o.slow:
                self.trickle(f, start, limit, o.slow)
            else:
                self.connection.sendfile(f, start, limit)
        if drop:
            # As if the server died: no more bytes, the connection goes away.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def trickle(self, f, offset, count, bps):
        chunk = max(1, bps // 20)
        f.seek(offset)
        while count > 0:
            data = f.read(min(chunk, count))
            if not data:
                break
            self.wfile.write(data)
            count -= len(data)
            time.sleep(len(data) / bps)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that went away mid-body (cancelled, timed out) is part of the tests, not an error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--require-token")
    p.add_argument("--token-header", default="PRIVATE-TOKEN")
    p.add_argument("--require-basic")
    p.add_argument("--drop-after", type=int)
    p.add_argument("--slow", type=int, default=0)
    p.add_argument("--no-range", action="store_true")
    p.add_argument("--redirect-query", default="X-Amz-Signature=redirect-signature")
    opts = p.parse_args()

    srv = Server(("127.0.0.1", opts.port), Handler)
    srv.opts = opts
    srv.log_lock = threading.Lock()
    srv.state_lock = threading.Lock()
    srv.dropped = set()

    tmp = opts.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, opts.port_file)

    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
