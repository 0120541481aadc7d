"""Configuration: the YAML file, `${VAR}` keys, the standard provider variables, the active provider."""

from __future__ import annotations

import httpx
import pytest

from chatledger.config import ConfigError, Settings, interpolate, load_gateway_config
from tests.conftest import client_for


def test_interpolation_reads_variables_and_defaults():
    environ = {"KEY": "secret"}
    assert interpolate("a ${KEY} b ${MISSING:-fallback} c ${MISSING}", environ) == "a secret b fallback c "


def test_environment_alone_configures_providers(tmp_path):
    settings = Settings(_env_file=None, openai_api_key="sk-o", openai_base_url="http://localhost:1/v1",
                        anthropic_api_key="sk-a")
    config = load_gateway_config(settings, environ={})
    assert set(config.providers) == {"openai", "anthropic", "mock"}
    assert config.active_provider == "openai"
    assert config.providers["openai"].base_url == "http://localhost:1/v1"
    assert "sk-o" not in repr(config)


def test_nothing_configured_means_mock(tmp_path):
    config = load_gateway_config(Settings(_env_file=None), environ={})
    assert config.active_provider == "mock" and list(config.providers) == ["mock"]


def test_yaml_file_maps_models_and_aliases(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("""
providers:
  qwen: {type: dashscope, api_key: "${QWEN_KEY}"}
  local: {type: openai, base_url: "http://127.0.0.1:11434/v1"}
models:
  qwen-turbo: {provider: qwen}
  coder: {provider: local, model: "qwen2.5-coder:7b", aliases: [code]}
active_provider: local
""")
    config = load_gateway_config(Settings(_env_file=None, chatledger_config=path), environ={"QWEN_KEY": "dk"})
    assert config.providers["qwen"].api_key.get_secret_value() == "dk"
    assert config.providers["qwen"].base_url == "https://dashscope.aliyuncs.com"
    assert config.models["code"].upstream_model == "qwen2.5-coder:7b"
    assert config.models["qwen-turbo"].upstream_model == "qwen-turbo"
    assert config.active_provider == "local"


def test_bad_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("models:\n  m: {provider: nowhere}\n")
    with pytest.raises(ConfigError, match="unknown provider 'nowhere'"):
        load_gateway_config(Settings(_env_file=None, chatledger_config=path), environ={})


def test_active_provider_switches_at_runtime_and_is_stored(make_gateway, openai_upstream):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1", openai_api_key="k")
    client = client_for(gateway)
    ask = {"model": "whatever", "messages": [{"role": "user", "content": "who answers?"}]}
    assert client.chat.completions.create(**ask).choices[0].message.content == "Echo: who answers?"

    switched = httpx.put(gateway.url + "/v1/providers/active", json={"provider": "mock"})
    assert switched.status_code == 200
    assert "mock model" in client.chat.completions.create(**ask).choices[0].message.content
    assert gateway.rows("SELECT value FROM settings WHERE key = 'active_provider'")[0]["value"] == "mock"
    assert [r["provider"] for r in gateway.rows("SELECT provider FROM requests ORDER BY id")] == ["openai", "mock"]

    refused = httpx.put(gateway.url + "/v1/providers/active", json={"provider": "nope"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "provider"


def test_master_key_guards_the_admin_routes(make_gateway):
    gateway = make_gateway(chatledger_master_key="mk-123")
    assert httpx.get(gateway.url + "/v1/providers").status_code == 401
    listed = httpx.get(gateway.url + "/v1/providers", headers={"Authorization": "Bearer mk-123"})
    assert listed.status_code == 200 and listed.json()["active_provider"] == "mock"
