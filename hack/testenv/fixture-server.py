#!/usr/bin/env python3
"""Test fixture server on loopback: smart-HTTP Git and a static Helm chart repository.

  /git/<repo>.git/...      git http-backend (smart HTTP), no auth
  /private/<repo>.git/...  git http-backend behind HTTP basic auth; the accepted
                           "user:password" is read from <root>/auth/<repo> on every
                           request, so a test breaks or fixes credentials by rewriting it
  /charts/...              static files (index.yaml and chart .tgz)
  /private-charts/<name>/... the chart repository <root>/charts/<name> behind HTTP basic auth;
                           the accepted "user:password" is read from <root>/auth/<name>
  /healthz                 "ok"

Each refused fetch (a Git info/refs or a chart index.yaml request; those within 300 ms count
once) adds one to <root>/auth/<name>.refused: a test reads how often Flux has failed and
retried by itself.

Repositories live in <root>/git/<repo>.git (bare); charts in <root>/charts.
"""
import argparse
import base64
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REFUSALS = threading.Lock()
LAST_REFUSAL = {}
GIT_HTTP_BACKEND = os.environ.get("GIT_HTTP_BACKEND", "/usr/lib/git-core/git-http-backend")


class Handler(BaseHTTPRequestHandler):
    root = "."
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):  # quiet; errors still go to stderr
        if os.environ.get("FIXTURE_SERVER_VERBOSE"):
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def route(self):
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            return self.reply(200, b"ok", "text/plain")
        if path.startswith("/charts/"):
            return self.static(path[len("/charts/"):])
        if path.startswith("/private-charts/"):
            rel = path[len("/private-charts/"):]
            name = rel.split("/", 1)[0]
            if self.check_auth(name) is None:
                if rel.endswith("/index.yaml"):
                    self.count_refusal(name)
                return self.refuse()
            return self.static(rel)
        if path.startswith("/git/"):
            return self.git(path[len("/git"):], query, None)
        if path.startswith("/private/"):
            name = path[len("/private/"):].split("/", 1)[0]
            user = self.check_auth(name)
            if user is None:
                if path.endswith("/info/refs"):
                    self.count_refusal(name[:-4] if name.endswith(".git") else name)
                return self.refuse()
            return self.git(path[len("/private"):], query, user)
        self.reply(404, b"not found", "text/plain")

    def check_auth(self, repo):
        repo = repo[:-4] if repo.endswith(".git") else repo
        if not repo or "/" in repo or repo.startswith("."):
            return None
        try:
            with open(os.path.join(self.root, "auth", repo)) as f:
                want = f.read().strip()
        except OSError:
            return None
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            got = base64.b64decode(header[6:]).decode()
        except Exception:
            return None
        return got.split(":", 1)[0] if got == want else None

    def count_refusal(self, name):
        if not name or "/" in name or name.startswith("."):
            return
        path = os.path.join(self.root, "auth", name + ".refused")
        with REFUSALS:
            # Requests within 300 ms are one fetch (Flux retries 750 ms apart at the soonest).
            now = time.monotonic()
            if now - LAST_REFUSAL.get(path, -1.0) < 0.3:
                return
            LAST_REFUSAL[path] = now
            try:
                with open(path) as f:
                    n = int(f.read().strip() or 0)
            except (OSError, ValueError):
                n = 0
            with open(path, "w") as f:
                f.write(str(n + 1))

    def refuse(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="fixture"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def static(self, rel):
        base = os.path.realpath(os.path.join(self.root, "charts"))
        full = os.path.realpath(os.path.join(base, rel))
        if not full.startswith(base + os.sep) or not os.path.isfile(full):
            return self.reply(404, b"not found", "text/plain")
        with open(full, "rb") as f:
            data = f.read()
        ctype = "application/x-yaml" if full.endswith(".yaml") else "application/octet-stream"
        self.reply(200, data, ctype)

    def git(self, path_info, query, user):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": os.path.join(self.root, "git"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if user:
            env["REMOTE_USER"] = user
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        proc = subprocess.run([GIT_HTTP_BACKEND], input=body, env=env, capture_output=True)
        out = proc.stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode(errors="replace").splitlines():
            if ":" not in line:
                continue
            k, v = line.split(":", 1)
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            else:
                headers.append((k.strip(), v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    os.makedirs(os.path.join(args.root, "git"), exist_ok=True)
    os.makedirs(os.path.join(args.root, "charts"), exist_ok=True)
    os.makedirs(os.path.join(args.root, "auth"), exist_ok=True)
    Handler.root = args.root
    ThreadingHTTPServer((args.addr, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
