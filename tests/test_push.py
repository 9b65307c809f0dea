"""`postformer push`: the upload plan, the checks on the folder, and the upload itself through a real
`huggingface_hub` client talking to a local fake Hub that records every request."""

import base64
import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import save_tiny_model

from postformer.cli import main
from postformer.push import (
    HubAuthenticationError,
    HubConnectionError,
    format_plan,
    left_out,
    push_to_hub,
    upload_plan,
)

TOKEN = "hf_fake_write_token"

# The smallest card that satisfies the Hub's metadata rules; written by hand so these tests do not depend on
# how postformer.hub_cards words its cards.
CARD = """---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags:
- postformer
---

# tiny posts model

A test model.
"""

# What a training run leaves in its folder that must never be uploaded.
NOT_UPLOADED = {
    "checkpoint-2/model.safetensors": b"checkpoint weights",
    "checkpoint-2/optimizer.pt": b"optimizer state",
    "checkpoint-2/trainer_state.json": b"{}",
    "runs/Nov29/events.out.tfevents.1.host": b"tensorboard",
    "training_args.bin": b"pickle",
    "pytorch_model.bin": b"pickled weights",
    ".hidden_notes": b"secret",
    ".cache/huggingface/upload/x.metadata": b"cache",
    "tokenizer.json.tmp": b"partial write",
    "README.md~": b"editor backup",
    "__pycache__/modeling_postformer.cpython-311.pyc": b"bytecode",
    # per-post dumps postformer writes into model folders: the user's posts, or generations that can repeat them
    "eval_predictions.jsonl": b'{"split": "validation", "text": "a private post", "label": "love"}\n',
    "samples.jsonl": b'{"step": 10, "prompt": "Breaking news:", "text": " a training post, verbatim"}\n',
}
# ... as the dry run lists them: one entry per file or left-out folder.
LEFT_OUT_ENTRIES = {"checkpoint-2/", "runs/", "training_args.bin", "pytorch_model.bin", ".hidden_notes", ".cache/",
                    "tokenizer.json.tmp", "README.md~", "__pycache__/", "eval_predictions.jsonl", "samples.jsonl"}
# ... and what it leaves that is worth publishing.
UPLOADED_EXTRAS = {
    "metrics.json": b'{"eval_loss": 3.0}\n',
    "training_config.json": b'{"preset": "small"}\n',
    "loss_curve.png": b"\x89PNG not really",
}


@pytest.fixture(scope="module")
def pristine_model(tmp_path_factory) -> Path:
    folder = save_tiny_model(tmp_path_factory.mktemp("pristine") / "tiny-posts")
    (folder / "README.md").write_text(CARD, encoding="utf-8")
    for name, content in {**NOT_UPLOADED, **UPLOADED_EXTRAS}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def model_dir(pristine_model, tmp_path) -> Path:
    """A fresh copy of the model folder, free to be broken by the test."""
    return Path(shutil.copytree(pristine_model, tmp_path / "tiny-posts"))


def expected_plan(folder: Path) -> dict[str, int]:
    """Every file of the folder, minus those that must not go up: computed independently of push.py."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    return {path: size for path, size in files.items() if path not in NOT_UPLOADED}


def test_dry_run_plan_lists_each_publishable_file_and_nothing_else(model_dir, capsys):
    plan = upload_plan(model_dir)
    assert [path for path, _ in plan] == sorted(path for path, _ in plan)
    assert dict(plan) == expected_plan(model_dir)
    for path, size in plan:
        assert (model_dir / path).stat().st_size == size
    names = {path for path, _ in plan}
    assert {"model.safetensors", "config.json", "configuration_postformer.py", "modeling_postformer.py",
            "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"} <= names
    assert set(UPLOADED_EXTRAS) <= names
    assert not any(name.startswith(("checkpoint-", "runs/", ".")) or name.endswith((".bin", ".pt")) for name in names)

    assert push_to_hub(model_dir, "me/tiny-posts", dry_run=True) == plan  # no token, no network: still fine
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-posts", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for path, size in plan:
        assert re.search(rf"^{re.escape(path)}\s+{size:,} bytes$", out, re.MULTILINE), path
    assert f"{len(plan)} files, {sum(size for _, size in plan):,} bytes would be uploaded to me/tiny-posts" in out
    assert format_plan(plan).count("\n") == len(plan)

    # what is left out, each with why, after the plan; none of it as a file to upload
    skipped = dict(left_out(model_dir))
    assert set(skipped) == LEFT_OUT_ENTRIES
    assert all(any(name == entry or name.startswith(entry) for entry in skipped) for name in NOT_UPLOADED)
    planned, listed = out.split(f"left out, never uploaded ({len(LEFT_OUT_ENTRIES)}):\n")
    for entry, reason in skipped.items():
        assert re.search(rf"^  {re.escape(entry)}\s+{re.escape(reason)}$", listed, re.MULTILINE), entry
        assert not re.search(rf"^{re.escape(entry)}", planned, re.MULTILINE), entry
    assert "held-out post" in skipped["eval_predictions.jsonl"] and "verbatim" in skipped["samples.jsonl"]
    assert "pickle" in skipped["training_args.bin"] and "checkpoint" in skipped["checkpoint-2/"]


def _remove_weights(folder):
    (folder / "model.safetensors").unlink()


def _drop_auto_map(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))


def _remove_modeling_code(folder):
    (folder / "modeling_postformer.py").unlink()


def _remove_generation_code(folder):  # imported by modeling_postformer.py, which the auto_map names
    (folder / "generation_postformer.py").unlink()


def _remove_tokenizer(folder):
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()


def _remove_card(folder):
    (folder / "README.md").unlink()


def _invalid_card_metadata(folder):
    (folder / "README.md").write_text(CARD.replace("license: mit", "license: not-a-real-license"))


def _remove_generation_config(folder):
    (folder / "generation_config.json").unlink()


def _shard_without_its_file(folder):
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "break_folder, error, expected",
    [
        (_remove_weights, FileNotFoundError,
         ["missing model weights: model.safetensors", "pytorch_model.bin is a pickle"]),
        (_drop_auto_map, ValueError, ["config.json has no auto_map", "trust_remote_code"]),
        (_remove_modeling_code, FileNotFoundError, ["missing modeling_postformer.py (config.json auto_map["]),
        (_remove_generation_code, FileNotFoundError,
         ["missing generation_postformer.py (imported by modeling_postformer.py)"]),
        (_remove_tokenizer, FileNotFoundError, ["missing tokenizer_config.json", "missing tokenizer vocabulary"]),
        (_remove_card, FileNotFoundError, ["missing README.md (the model card"]),
        (_invalid_card_metadata, ValueError, ["README.md is not a valid model card", "license"]),
        (_remove_generation_config, FileNotFoundError, ["missing generation_config.json"]),
        (_shard_without_its_file, FileNotFoundError, ["missing model-00002-of-00002.safetensors (a weights shard"]),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_incomplete_or_invalid_folder_is_refused_naming_each_problem(model_dir, break_folder, error, expected, capsys):
    break_folder(model_dir)
    with pytest.raises(error) as raised:
        upload_plan(model_dir)
    for text in expected:
        assert text in str(raised.value)
    assert "\n" not in str(raised.value)
    # The CLI prints it as one line, and uploads nothing even without --dry-run (the checks come first).
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-posts"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("postformer push: error: ") and err.count("\n") == 1 and expected[0] in err


def test_several_problems_are_reported_together(model_dir):
    _remove_weights(model_dir)
    _drop_auto_map(model_dir)
    _remove_card(model_dir)
    with pytest.raises(ValueError) as raised:  # one problem is a bad file, not a missing one: ValueError
        upload_plan(model_dir)
    message = str(raised.value)
    assert "missing model weights" in message and "no auto_map" in message and "missing README.md" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        upload_plan(model_dir / "nowhere")


class FakeHub:
    """A local HTTP server answering the Hub API calls `HfApi.create_repo`, `create_branch` and `upload_folder`
    make, recording each request. Every file is declared "regular" at preupload, so its bytes travel base64-encoded
    inside the commit request (no LFS, no Xet)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.created: list[dict] = []
        self.branches: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.unexpected: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, handler, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler, method: str) -> None:
        path = urlsplit(handler.path).path
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        auth = handler.headers.get("Authorization")
        self.requests.append({"method": method, "path": path, "authorization": auth})
        if auth != f"Bearer {TOKEN}":
            return self._reply(handler, 401, {"error": "Invalid credentials in Authorization header"})
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            # As the Hub does: a bare name goes to the token owner's namespace, and the URL says which.
            repo = f"{payload.get('organization') or 'tester'}/{payload['name']}"
            return self._reply(handler, 200, {"url": f"{self.url}/{repo}", "name": repo})
        if method == "POST" and path == "/api/validate-yaml":
            return self._reply(handler, 200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit|branch)/(?P<rev>[^/]+)",
                             path)
        if method == "POST" and match:
            repo, action, revision = match["repo"], match["action"], unquote(match["rev"])
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._reply(handler, 200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                ]})
            if action == "branch":
                self.branches.append((repo, revision))
                return self._reply(handler, 200, {})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                     for line in lines if line["key"] == "file"}
            others = [line["key"] for line in lines if line["key"] not in ("header", "file")]
            oid = f"{len(self.commits) + 1:040x}"
            self.commits.append({"repo": repo, "revision": revision, "header": header, "files": files,
                                 "other_keys": others})
            return self._reply(handler, 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid,
                                              "pullRequestUrl": None})
        self.unexpected.append(f"{method} {path}")
        return self._reply(handler, 404, {"error": f"fake hub: no route for {method} {path}"})


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The Hub client as on a user's machine: not offline (the test session sets HF_HUB_OFFLINE), no saved token,
    no HF_TOKEN, HF_ENDPOINT unset."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_push_creates_the_repo_and_commits_exactly_the_planned_files(model_dir, online, capsys):
    plan = upload_plan(model_dir)
    with FakeHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)  # read when push_to_hub runs, as a user would set it
        online.setenv("HF_TOKEN", TOKEN)
        assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-posts", "--private",
                     "--commit-message", "First upload"]) == 0
        out = capsys.readouterr().out
        assert f"{hub.url}/me/tiny-posts/commit/{1:040x}" in out

        # A second push: a bare repo name (the user's namespace), a new branch, the token passed explicitly
        # (HF_TOKEN unset), the default commit message.
        online.delenv("HF_TOKEN")
        url = push_to_hub(model_dir, "tiny-posts", revision="v1", token=TOKEN)
        assert url == f"{hub.url}/tester/tiny-posts/commit/{2:040x}"

    assert hub.unexpected == []
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    # huggingface_hub versions differ in whether they send the repo type ("model") when it is the default
    assert [{k: v for k, v in c.items() if k != "type"} for c in hub.created] == [
        {"name": "tiny-posts", "organization": "me", "visibility": "private"},
        {"name": "tiny-posts", "organization": None, "visibility": "public"},
    ]
    assert all(c.get("type", "model") == "model" for c in hub.created)
    assert hub.branches == [("tester/tiny-posts", "v1")]
    assert [(c["repo"], c["revision"]) for c in hub.commits] == [("me/tiny-posts", "main"), ("tester/tiny-posts", "v1")]
    routes = {re.sub(r"/api/models/[^/]+/[^/]+/(\w+)/.*", r"/api/models/{repo}/\1/{revision}", r["path"])
              for r in hub.requests}
    assert routes == {"/api/repos/create", "/api/validate-yaml", "/api/models/{repo}/preupload/{revision}",
                      "/api/models/{repo}/branch/{revision}", "/api/models/{repo}/commit/{revision}"}
    assert hub.commits[0]["header"]["summary"] == "First upload"
    assert hub.commits[1]["header"]["summary"] == "Upload tiny-posts with postformer"
    for commit in hub.commits:
        assert commit["other_keys"] == []  # no LFS pointers, no deletions, no copies
        assert sorted(commit["files"]) == [path for path, _ in plan]
        for path, content in commit["files"].items():
            assert content == (model_dir / path).read_bytes(), path


def test_push_without_a_token_or_with_a_refused_one_is_a_clear_error(model_dir, online, capsys):
    with FakeHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(HubAuthenticationError, match=r"hf auth login.*HF_TOKEN"):
            push_to_hub(model_dir, "me/tiny-posts")
        assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-posts"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not logged in" in err and "hf auth login" in err and "Traceback" not in err
        assert hub.requests == []  # refused before any request

        assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-posts", "--token", "hf_wrong"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "refused the token (401 Unauthorized)" in err and "hf auth login" in err
        assert hub.commits == []


def test_push_with_the_hub_unreachable_or_offline_is_a_clear_error(model_dir, online, capsys):
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    online.setenv("HF_TOKEN", TOKEN)
    unreachable = rf"cannot reach the Hugging Face Hub at http://127.0.0.1:{closed_port}"
    with pytest.raises(HubConnectionError, match=unreachable):
        push_to_hub(model_dir, "me/tiny-posts")
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/tiny-posts"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach" in err and "HF_ENDPOINT" in err and "Traceback" not in err

    import huggingface_hub.constants

    online.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubConnectionError, match="offline mode is on .*unset it"):
        push_to_hub(model_dir, "me/tiny-posts")
