"""The newcomer's path: `chatledger serve` on a fresh directory answers through the mock provider."""

from __future__ import annotations

import sqlite3

import httpx

from tests.gateway_server import GatewayProcess


def test_fresh_serve_answers_with_mock_and_records(tmp_path):
    gateway = GatewayProcess(tmp_path, {}).start()
    try:
        response = httpx.post(gateway.url + "/v1/chat/completions", timeout=10,
                              json={"model": "qwen-turbo", "messages": [{"role": "user", "content": "Hello!"}]})
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"].endswith("Hello!")
    finally:
        gateway.stop()
    banner = gateway.output.decode()
    assert "Database ready: { sessions: 0, requests: 0, responses: 0 }" in banner
    assert str(tmp_path / "data" / "chatledger.db") in banner
    assert "mock" in banner and "offline mock provider" in banner
    assert f"http://127.0.0.1:{gateway.port}/v1" in banner
    connection = sqlite3.connect(tmp_path / "data" / "chatledger.db")
    assert connection.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    connection.close()


def test_python_dash_m_and_bad_config_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m: {provider: nowhere}\n")
    gateway = GatewayProcess(tmp_path, {"CHATLEDGER_CONFIG": str(bad)})
    try:
        gateway.start()
        raise AssertionError("should not start")
    except RuntimeError as exc:
        assert "unknown provider 'nowhere'" in str(exc)
        assert "Traceback" not in str(exc)
