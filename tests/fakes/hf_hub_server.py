"""A local fake of the Hugging Face Hub, speaking the HTTP API that `huggingface_hub` downloads through.

What `snapshot_download` and `hf_hub_download` call, as the real Hub answers it:

- `GET /api/models/{repo}/revision/{revision}` (and `/api/models/{repo}`): the model's info, `sha` the commit;
- `GET /api/models/{repo}/tree/{revision}[/{path}]?recursive=…`: the files (`type`, `oid` the git blob id, `size`,
  `path`, and for LFS files `lfs: {oid: sha256, size, pointerSize}`), and the folders;
- `HEAD`/`GET /{repo}/resolve/{revision}/{file}`: a plain file is served with `ETag` (its git blob id, quoted),
  `X-Repo-Commit` and `Content-Length`; an LFS file (weights) answers `302` to a signed CDN address on another
  origin, with `X-Linked-Etag` (the sha256), `X-Linked-Size` and `X-Repo-Commit`, as the Hub does, so the client
  must not send its token there (the CDN here refuses any request that carries one);
- errors carry the Hub's `X-Error-Code` / `X-Error-Message` headers and an `{"error": …}` body: `RepoNotFound`
  (401 to an anonymous caller, 404 to a logged-in one: the Hub doesn't tell strangers whether a private repository
  exists), `RevisionNotFound`, `EntryNotFound`, and for a gated repository's files `GatedRepo`: 401 without a token,
  403 with a token whose account was not granted access. An unknown token is refused on every call (401, "Invalid
  credentials in Authorization header"). A gated repository's info and file list are public, as on the Hub.

Every request is recorded (method, path, the Authorization header), so tests can check what was fetched and with
which token. `huggingface_hub` reads its endpoint once, at import, from HF_ENDPOINT: point it here by setting
`huggingface_hub.constants.ENDPOINT` and `HUGGINGFACE_CO_URL_TEMPLATE` (see `endpoint_constants`), or pass
`endpoint=` to its functions.

Usage::

    hub = FakeHub()
    hub.add_repo("Systran/faster-whisper-tiny", {"config.json": b"{}", "model.bin": b"..."})
    hub.add_repo("sesame/csm-1b", files, gated=True)
    hub.grant("hf_token_with_access", "sesame/csm-1b")
    async with hub: ...
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.local_server import LocalServer

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".wav", ".gguf")  # what a model repository's .gitattributes puts in LFS
CDN_SECRET = b"fake-cdn-signing-key"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(content: bytes) -> str:
    """Git's id of a blob (what the Hub sends as `oid` and as a plain file's ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    """The pointer file git stores for an LFS file."""
    sha = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(content)}\n".encode()


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    private: bool = False

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path])
        return digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None


@dataclass
class FakeHub(LocalServer):
    repos: dict[str, HubRepo] = field(default_factory=dict)
    # token -> the gated repositories its account was granted; every token here is a valid one
    tokens: dict[str, set[str]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    # (repo id, file) of every file content served: a GET on resolve, or on the CDN an LFS file redirected to
    fetched: list[tuple[str, str]] = field(default_factory=list)

    # --- setting up ---

    def add_repo(
        self, repo_id: str, files: dict[str, bytes] | Path, *, gated: bool = False, private: bool = False
    ) -> HubRepo:
        """A model repository with `files` (a dict, or every file of a folder), plus the .gitattributes a real one
        has."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        repo = HubRepo(repo_id, {".gitattributes": GITATTRIBUTES, **files}, gated=gated, private=private)
        self.repos[repo_id] = repo
        return repo

    def add_token(self, token: str) -> None:
        self.tokens.setdefault(token, set())

    def grant(self, token: str, repo_id: str) -> None:
        """The token's account accepted the gated repository's licence (and was granted access)."""
        self.tokens.setdefault(token, set()).add(repo_id)

    def downloads(self, repo_id: str) -> list[str]:
        """The files of `repo_id` whose content was fetched (GET on resolve, or on the CDN it redirected to)."""
        return sorted(path for repo, path in self.fetched if repo == repo_id)

    @property
    def cdn_host(self) -> str:
        # Another origin than `host` (the Hub): the client must not follow there with its token.
        return self.host.replace("127.0.0.1", "localhost")

    def endpoint_constants(self) -> dict[str, str]:
        """The `huggingface_hub.constants` values that make the library talk to this fake."""
        return {
            "ENDPOINT": self.host,
            "HUGGINGFACE_CO_URL_TEMPLATE": self.host + "/{repo_id}/resolve/{revision}/{filename}",
        }

    # --- routes ---

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/models/{owner}/{name}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/revision/{revision}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}", self._tree)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}/{path:.+}", self._tree)
        app.router.add_get("/{owner}/{name}/resolve/{revision}/{path:.+}", self._resolve)  # HEAD too
        app.router.add_get("/cdn/{owner}/{name}/{sha256}", self._cdn)

    # --- handlers ---

    def _record(self, request: web.Request) -> None:
        self.requests.append(RecordedRequest(request.method, request.path, request.headers.get("Authorization")))

    def _token(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """The caller's token, or the 401 the Hub gives for one it doesn't know."""
        header = request.headers.get("Authorization", "")
        if not header:
            return None, None
        token = header.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            return token, _error(401, None, "Invalid credentials in Authorization header")
        return token, None

    def _repo(self, request: web.Request) -> tuple[HubRepo | None, str | None, web.Response | None]:
        self._record(request)
        token, refused = self._token(request)
        if refused is not None:
            return None, token, refused
        repo = self.repos.get(f"{request.match_info['owner']}/{request.match_info['name']}")
        if repo is None or (repo.private and token is None):
            # Anonymous callers get 401, as for a private repository: the Hub doesn't say which it is.
            return None, token, _error(401 if token is None else 404, "RepoNotFound", "Repository not found")
        revision = request.match_info.get("revision", "main")
        if revision not in ("main", repo.commit):
            return None, token, _error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return repo, token, None

    async def _info(self, request: web.Request) -> web.Response:
        repo, _, refused = self._repo(request)
        if repo is None:
            assert refused is not None
            return refused
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        owner = repo.repo_id.split("/")[0]
        return web.json_response(
            {
                "_id": repo.commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": owner,
                "sha": repo.commit,
                "lastModified": now,
                "createdAt": now,
                "private": repo.private,
                "disabled": False,
                "gated": "manual" if repo.gated else False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(repo.files)],
                "usedStorage": sum(len(content) for content in repo.files.values()),
            },
            headers={"X-Repo-Commit": repo.commit},
        )

    async def _tree(self, request: web.Request) -> web.Response:
        repo, _, refused = self._repo(request)
        if repo is None:
            assert refused is not None
            return refused
        under = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "false").lower() == "true"
        entries: dict[str, dict[str, Any]] = {}
        for path, content in sorted(repo.files.items()):
            if under and not path.startswith(under + "/"):
                continue
            rest = path[len(under) + 1 :] if under else path
            parts = rest.split("/")
            if len(parts) > 1 and not recursive:  # a folder at this level, not its files
                folder = f"{under}/{parts[0]}" if under else parts[0]
                entries[folder] = {"type": "directory", "oid": git_blob_id(folder.encode()), "size": 0, "path": folder}
                continue
            for depth in range(1, len(parts)):  # the folders on the way, as the Hub lists them recursively
                folder = "/".join(([under] if under else []) + parts[:depth])
                entries[folder] = {"type": "directory", "oid": git_blob_id(folder.encode()), "size": 0, "path": folder}
            entry: dict[str, Any] = {"type": "file", "size": len(content), "path": path}
            if repo.is_lfs(path):
                pointer = lfs_pointer(content)
                sha = hashlib.sha256(content).hexdigest()
                entry |= {
                    "oid": git_blob_id(pointer),
                    "lfs": {"oid": sha, "size": len(content), "pointerSize": len(pointer)},
                }
            else:
                entry["oid"] = git_blob_id(content)
            entries[path] = entry
        return web.json_response(list(entries.values()))

    async def _resolve(self, request: web.Request) -> web.Response:
        repo, token, refused = self._repo(request)
        if repo is None:
            assert refused is not None
            return refused
        path = request.match_info["path"]
        commit = {"X-Repo-Commit": repo.commit}
        if repo.gated and (token is None or repo.repo_id not in self.tokens.get(token, set())):
            if token is None:
                message = (
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                return _error(401, "GatedRepo", message, commit)
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit https://huggingface.co/{repo.repo_id} to ask for access."
            )
            return _error(403, "GatedRepo", message, commit)
        content = repo.files.get(path)
        if content is None:
            return _error(404, "EntryNotFound", f'{path} does not exist on "{request.match_info["revision"]}"', commit)
        if repo.is_lfs(path):
            sha = hashlib.sha256(content).hexdigest()
            signature = _sign(f"{repo.repo_id}/{sha}")
            return web.Response(
                status=302,
                headers={
                    **commit,
                    "Location": f"{self.cdn_host}/cdn/{repo.repo_id}/{sha}?signature={signature}",
                    "ETag": f'"{git_blob_id(lfs_pointer(content))}"',
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(content)),
                },
            )
        if request.method == "GET":
            self.fetched.append((repo.repo_id, path))
        return web.Response(
            body=content,
            headers={**commit, "ETag": f'"{git_blob_id(content)}"', "Accept-Ranges": "bytes"},
            content_type="application/octet-stream",
        )

    async def _cdn(self, request: web.Request) -> web.Response:
        self._record(request)
        repo_id, sha = f"{request.match_info['owner']}/{request.match_info['name']}", request.match_info["sha256"]
        signed = hmac.compare_digest(request.query.get("signature", ""), _sign(f"{repo_id}/{sha}"))
        if request.headers.get("Authorization") or not signed:
            # A signed URL is all the CDN takes; a Hub token sent here would have left the Hub.
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        repo = self.repos.get(repo_id)
        for path, content in (repo.files if repo else {}).items():
            if hashlib.sha256(content).hexdigest() == sha:
                self.fetched.append((repo_id, path))
                return web.Response(body=content, content_type="application/octet-stream")
        return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")


def _sign(what: str) -> str:
    return hmac.new(CDN_SECRET, what.encode(), "sha256").hexdigest()


def _error(status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> web.Response:
    extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
    return web.json_response({"error": message}, status=status, headers=extra)
