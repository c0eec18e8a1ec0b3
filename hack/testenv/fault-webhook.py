#!/usr/bin/env python3
"""A validating admission webhook that injects API faults, for the fault tests.

The kube-apiserver calls it for the writes a ValidatingWebhookConfiguration routes here; it
answers from a plan (JSON, re-read on every request so a test can change it):

  {"rules": [{"namespace": "ns", "resource": "gitrepositories", "subResource": "",
              "fieldManager": "fluxmedic", "fault": "conflict" | "timeout", "count": 2}]}

The first `count` matching requests get the fault, later ones are allowed:
  conflict  - denied with HTTP 409 Conflict, which the apiserver returns to the client as is;
  timeout   - answered only after the webhook's timeoutSeconds, so the apiserver gives the
              client its "context deadline exceeded" error.
Every injected fault is appended to the log file as one JSON line.

  fault-webhook.py --port P --cert C --key K --plan plan.json --log faults.jsonl
"""
import argparse
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
used = {}  # rule index -> faults injected so far


def matches(rule, req):
    opts = req.get("options") or {}
    return (
        rule.get("namespace") == req.get("namespace")
        and rule.get("resource") == req.get("resource", {}).get("resource")
        and rule.get("subResource", "") == req.get("subResource", "")
        and rule.get("fieldManager", opts.get("fieldManager")) == opts.get("fieldManager")
    )


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = body["request"]
        try:
            with open(self.server.plan) as f:
                rules = json.load(f).get("rules", [])
        except (OSError, ValueError):
            rules = []
        fault = None
        with lock:
            for i, rule in enumerate(rules):
                if matches(rule, req) and used.get(i, 0) < rule.get("count", 1):
                    used[i] = used.get(i, 0) + 1
                    fault = rule["fault"]
                    with open(self.server.log, "a") as f:
                        f.write(json.dumps({"fault": fault, "rule": i, "namespace": req.get("namespace"),
                                            "resource": req["resource"]["resource"],
                                            "subResource": req.get("subResource", ""),
                                            "name": req.get("name"), "at": time.time()}) + "\n")
                    break
        response = {"uid": req["uid"], "allowed": True}
        if fault == "conflict":
            response = {"uid": req["uid"], "allowed": False, "status": {
                "code": 409, "reason": "Conflict",
                "message": "injected conflict: the object has been modified; please apply your changes to the latest version and try again"}}
        elif fault == "timeout":
            time.sleep(self.server.delay)
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        try:
            self.wfile.write(out)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the apiserver gave up waiting: that was the point


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--delay", type=float, default=3.0, help="seconds a timeout fault waits")
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.plan, srv.log, srv.delay = args.plan, args.log, args.delay
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
