"""A small Hugging Face Hub on 127.0.0.1 for tests: the HTTP routes huggingface_hub's own client uses
to create a dataset repository, commit files to it, list and download them.

It keeps repositories in memory as a chain of commits ({path: bytes} each), answers every
pre-upload with the "regular" mode (contents inline in the commit) and serves files the way the
Hub does (X-Repo-Commit and ETag on HEAD). The client under test is the real huggingface_hub:
only the server is small. `fail_next` makes the next requests answer 503 (a Hub outage).
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class _Repo:
    def __init__(self):
        self.commits = [("0" * 40, {})]  # (sha, files)

    def at(self, revision: str):
        if revision in ("main", None):
            return self.commits[-1]
        for sha, files in self.commits:
            if sha == revision:
                return sha, files
        return None


class HubStandIn:
    def __init__(self):
        self.repos: dict = {}
        self.requests: list = []
        self.fail_next = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                stand_in._handle(self, "GET")

            def do_HEAD(self):
                stand_in._handle(self, "HEAD")

            def do_POST(self):
                stand_in._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str) -> dict:
        """The newest commit's files of a dataset repository."""
        return dict(self.repos[repo_id].commits[-1][1])

    # -- routing -------------------------------------------------------------------------------------------------

    def _handle(self, request, method: str) -> None:
        url = urlparse(request.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        body = b""
        if method == "POST":
            body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        with self._lock:
            self.requests.append((method, path))
            if self.fail_next > 0:
                self.fail_next -= 1
                return self._send(request, 503, {"error": "The Hub is down for maintenance"})
            try:
                status, payload, headers = self._route(method, path, query, body)
            except KeyError as exc:
                status, payload, headers = 404, {"error": f"Not found: {exc}"}, {"X-Error-Code": "EntryNotFound"}
        self._send(request, status, payload, headers, head=(method == "HEAD"))

    def _send(self, request, status, payload, headers=None, head=False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                            else "application/json")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if not head:
            request.wfile.write(data)

    def _route(self, method, path, query, body):
        if method == "POST" and path == "/api/repos/create":
            spec = json.loads(body)
            repo_id = f"{spec.get('organization') or 'user'}/{spec['name']}" if "/" not in spec["name"] \
                else spec["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": self._url(repo_id)}, {}
            self.repos[repo_id] = _Repo()
            return 200, {"url": self._url(repo_id)}, {}
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 5:
            repo_id = "/".join(parts[2:4])
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            action, revision = parts[4], (parts[5] if len(parts) > 5 else "main")
            found = repo.at(revision)
            if found is None:
                return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
            sha, files = found
            if method == "GET" and action == "revision":
                return 200, {"id": repo_id, "sha": sha, "private": True,
                             "siblings": [{"rfilename": name} for name in sorted(files)]}, {}
            if method == "GET" and action == "tree":
                under = "/".join(parts[6:])
                listed = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                          for name, data in sorted(files.items())
                          if not under or name.startswith(under.rstrip("/") + "/")]
                return 200, listed, {}
            if method == "POST" and action == "preupload":
                asked = json.loads(body)["files"]
                return 200, {"files": [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                                        "oid": None} for item in asked]}, {}
            if method == "POST" and action == "commit":
                return self._commit(repo_id, repo, body)
        if method in ("GET", "HEAD") and parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
            repo_id = "/".join(parts[1:3])
            repo = self.repos.get(repo_id)
            found = repo.at(parts[4]) if repo is not None else None
            name = "/".join(parts[5:])
            if found is None or name not in found[1]:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            sha, files = found
            data = files[name]
            return 200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        raise KeyError(path)

    def _commit(self, repo_id, repo, body):
        files = dict(repo.commits[-1][1])
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    return 404, {"error": "A file with this name doesn't exist"}, {}
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {name: data for name, data in files.items() if not name.startswith(prefix)}
            elif key != "header":
                return 400, {"error": f"unsupported commit line {key}"}, {}
        sha = hashlib.sha1(f"{repo_id}{len(repo.commits)}".encode() + body).hexdigest()
        repo.commits.append((sha, files))
        return 200, {"commitUrl": f"{self._url(repo_id)}/commit/{sha}", "commitOid": sha}, {}

    def _url(self, repo_id: str) -> str:
        return f"{self.endpoint}/datasets/{repo_id}"
