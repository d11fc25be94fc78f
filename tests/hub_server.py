"""A local HTTP server on 127.0.0.1 that answers the Hugging Face hub's upload API the way
huggingface_hub's `create_repo` and `create_commit` use it, and records every request
(`HF_ENDPOINT` points a process at it).

The routes: POST /api/repos/create, POST /api/validate-yaml, POST
/api/models/<repo>/preupload/<revision> (every file is answered `regular`, so its content
comes inline in the commit rather than through LFS or Xet, which the real hub uses for large
and binary files) and POST /api/models/<repo>/commit/<revision> (an NDJSON body). With
`refuse` set, every request is answered 401.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubRequest:
    path: str
    authorization: str | None
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Commit:
    repo: str
    message: str
    files: dict[str, bytes] = field(default_factory=dict)


class HubServer:
    def __init__(self, refuse: bool = False):
        self.requests: list[HubRequest] = []
        self.commits: list[Commit] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(HubRequest(self.path, self.headers["Authorization"], body))
                if refuse:
                    return self._answer(401, {"error": "Invalid credentials in Authorization"})
                self._answer(200, hub.answer(self.path.split("?")[0], body, self._base()))

            def _base(self) -> str:
                return f"http://{self.headers['Host']}"

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, body: bytes, base: str) -> dict:
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request.get('organization') or 'user'}/{request['name']}"
            return {"url": f"{base}/{repo}", "name": repo, "id": repo}
        if path == "/api/validate-yaml":
            return {"errors": [], "warnings": []}
        repo, _, action = path.removeprefix("/api/models/").rpartition("/")[0].rpartition("/")
        if action == "preupload":
            files = json.loads(body)["files"]
            regular = {"uploadMode": "regular", "shouldIgnore": False}
            return {"files": [{"path": f["path"], **regular} for f in files]}
        if action == "commit":
            self.commits.append(_commit(repo, body))
            return {"commitUrl": f"{base}/{repo}/commit/1", "commitOid": "1" * 40}
        return {"error": f"no route {path}"}

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _commit(repo: str, body: bytes) -> Commit:
    """The NDJSON commit: a header line, then one line per file (base64 content)."""
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    commit = Commit(repo, lines[0]["value"]["summary"])
    for line in lines[1:]:
        if line["key"] == "file":
            commit.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
    return commit
