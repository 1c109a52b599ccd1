"""`qexport serve` refuses bad options, unusable addresses and bad artifacts in one line on
stderr with exit 2 (no traceback, no uvicorn log); checksums are verified at load by default."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest

from tests.server.conftest import free_port, httpx, qexport_serve, serve_command


def run_all(cases: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once (each exits before serving), then collect them."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for name, cmd in cases.items()
    }
    out = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate(timeout=30)
            raise AssertionError(f"{name}: still running (it should have refused)") from exc
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def test_bad_options_addresses_and_artifacts_exit_2_in_one_line(tiny_artifact, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, tampered)
    tok = tampered / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<|endoftext|>"', '"<|endoftext!>"', 1))
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "qexport.json").write_text("{not json")
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    busy = str(listening.getsockname()[1])
    port = str(free_port())
    art = tiny_artifact
    cases = {
        "--max-wait-ms must be a finite number": ["--max-wait-ms", "inf"],
        "--max-wait-ms must be a finite number ": ["--max-wait-ms", "nan"],
        "--port must be in 1..65535, got 99999": ["--port", "99999"],
        "--request-timeout-s must be a finite number": ["--request-timeout-s", "0"],
        "--read-timeout-s must be in": ["--read-timeout-s", "-1"],
        "--max-queue must be >= 1": ["--max-queue", "0"],
        f"cannot listen on 127.0.0.1:{busy}: Address already in use": ["--port", busy],
        "cannot listen on 192.0.2.1": ["--host", "192.0.2.1", "--port", port],  # not ours
    }
    commands = {msg: serve_command(art, "--port", port, *args) for msg, args in cases.items()}
    # these two bind before loading: a port each
    commands["does not match its sha256"] = serve_command(tampered, "--port", str(free_port()))
    commands["invalid JSON"] = serve_command(garbled, "--port", str(free_port()))
    try:
        results = run_all(commands)
    finally:
        listening.close()
    for message, res in results.items():
        err = res.stderr.decode()
        assert res.returncode == 2, (message, err)
        assert err.count("\n") == 1 and err.startswith("qexport: error: "), (message, err)
        assert message.strip() in err, (message, err)


def test_no_verify_serves_a_tampered_artifact(tiny_artifact, tmp_path):
    """--no-verify skips the checksums (the tokenizer edit above is then served as is)."""
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, tampered)
    manifest = json.loads((tampered / "qexport.json").read_text())
    assert "tokenizer_config.json" in manifest.get("files", {}), manifest.get("files")
    cfg = tampered / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + " ")
    with qexport_serve(tampered, tmp_path, "--no-verify") as srv:
        assert httpx.get(f"{srv.base}/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "20000"])
def test_server_config_rejects_max_wait(emb, value):
    from qexport.server.app import ServerConfig, create_app

    with pytest.raises(ValueError, match="max_wait_ms must be a finite number"):
        create_app(emb, ServerConfig(max_wait_ms=float(value)))
