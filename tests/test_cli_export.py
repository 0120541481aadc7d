"""`chatledger export session|jsonl` and `chatledger report billing` over a recorded store."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from chatledger.ops.export import ExchangeFilter, iter_exchanges
from tests.test_cli_db import T0, exchange, invoke, record

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}


@pytest.fixture
def ledger(tmp_path):
    database = tmp_path / "ledger.db"
    record(database, [
        exchange(0, session="conversation-a", text="first turn"),
        exchange(1, session="conversation-a", text="second turn", tool_calls=[TOOL_CALL]),
        exchange(2, session="conversation-a", status=500, error="upstream failed"),
        exchange(3, model="qwen-turbo"),
        exchange(4, model="text-embedding-3-small", endpoint="embeddings"),
        exchange(5, model="mystery-model-x", prompt=1_000_000, completion=1_000_000),
        exchange(6, prompt=1_000_000, completion=1_000_000),  # gpt-4o-mini
        exchange(7, timestamp=T0 + 40 * 86_400_000),  # next month
    ])
    return database


def test_export_session(ledger, tmp_path):
    output = tmp_path / "session.json"
    result = invoke(ledger, "export", "session", "conversation-a", "-o", output)
    assert result.exit_code == 0, result.output
    document = json.loads(output.read_text())
    assert document["session"]["id"] == "conversation-a"
    assert document["session"]["message_count"] == 3
    assert [r["request_id"] for r in document["requests"]] == ["req-0", "req-1", "req-2"]
    assert document["requests"][0]["openai_request"]["messages"][0]["content"] == "first turn"
    assert document["requests"][0]["stream"] is False
    assert "qwen_request" not in document["requests"][0]  # the computed alias is not a stored column
    assert [r["response_id"] for r in document["responses"]] == ["resp-0", "resp-1", "resp-2"]
    assert document["responses"][1]["openai_response"]["choices"][0]["message"]["tool_calls"] == [TOOL_CALL]
    assert document["responses"][1]["parent_id"] == "resp-0"
    assert document["stats"] == {
        "session_id": "conversation-a", "request_count": 3, "response_count": 3, "error_count": 1,
        "prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30, "avg_duration_ms": 250.0,
        "first_request_at": T0, "last_request_at": T0 + 2000}

    to_stdout = invoke(ledger, "export", "session", "conversation-a")
    assert json.loads(to_stdout.stdout) == document
    missing = invoke(ledger, "export", "session", "nope")
    assert missing.exit_code == 1 and "no session 'nope'" in missing.output


def test_export_jsonl_raw(ledger, tmp_path):
    output = tmp_path / "all.jsonl"
    result = invoke(ledger, "export", "jsonl", "-o", output)
    assert result.exit_code == 0, result.output
    assert "exporting" in result.stderr and "wrote 8 lines" in result.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["metadata"]["request_id"] for line in lines] == [f"req-{n}" for n in range(8)]
    first = lines[0]
    assert first["request"]["messages"] == [{"role": "user", "content": "first turn"}]
    assert first["response"]["choices"][0]["message"]["content"] == "answer 0"
    assert first["metadata"]["session_id"] == "conversation-a"
    assert first["metadata"]["timestamp"] == T0 and first["metadata"]["response_timestamp"] == T0 + 250
    assert first["metadata"]["total_tokens"] == 15 and first["metadata"]["status_code"] == 200
    assert lines[2]["metadata"]["error"] == "upstream failed"

    # Filters: a time range (dates or ms, `--to` exclusive) and a model; standard output by default.
    result = invoke(ledger, "export", "jsonl", "--from", T0 + 3000, "--to", "2025-10-09", "--model", "gpt-4o-mini")
    assert [json.loads(line)["metadata"]["request_id"] for line in result.stdout.splitlines()] == ["req-6"]


def test_export_jsonl_openai_finetune(ledger, tmp_path):
    output = tmp_path / "train.jsonl"
    result = invoke(ledger, "export", "jsonl", "-o", output, "--format", "openai-finetune")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    # The error (req-2) and the embedding (req-4) are left out.
    assert len(lines) == 6 and "skipped 2" in result.stderr
    assert lines[0] == {"messages": [{"role": "user", "content": "first turn"},
                                     {"role": "assistant", "content": "answer 0"}]}
    assert lines[1]["messages"][-1] == {"role": "assistant", "tool_calls": [TOOL_CALL]}
    assert lines[1]["tools"][0]["function"]["name"] == "lookup"
    assert all(set(line) <= {"messages", "tools"} for line in lines)
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)


def test_export_streams_in_chunks(ledger):
    exported = list(iter_exchanges(ledger, ExchangeFilter(), chunk_rows=3))
    assert [item["metadata"]["request_id"] for item in exported] == [f"req-{n}" for n in range(8)]


def billing(ledger, *args):
    result = invoke(ledger, "report", "billing", "--from", "2025-10-01", "--to", "2025-10-31", "--json", *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return report, {item["model"]: item for item in report["models"]}


def test_billing_with_a_flat_price(ledger):
    report, models = billing(ledger, "--price-per-million", "2")
    assert report["total_requests"] == 7  # req-7 is in November
    # Three small chat answers, the error (no usage), the embedding and the two million-token exchanges.
    tokens = 15 * 3 + 10 + 4_000_000
    assert report["total_tokens"] == sum(item["total_tokens"] for item in models.values()) == tokens
    assert Decimal(report["estimated_cost"]) == Decimal(tokens) * 2 / 1_000_000
    assert models["gpt-4o-mini"]["requests"] == 4 and models["gpt-4o-mini"]["errors"] == 1
    assert {item["price_source"] for item in models.values()} == {"flat"}


def test_billing_with_genai_prices(ledger):
    pytest.importorskip("genai_prices")
    report, models = billing(ledger)
    mini = models["gpt-4o-mini"]
    assert mini["price_source"] == "genai-prices"
    # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
    expected = (Decimal(mini["prompt_tokens"]) * Decimal("0.15")
                + Decimal(mini["completion_tokens"]) * Decimal("0.6")) / 1_000_000
    assert Decimal(mini["cost"]) == pytest.approx(expected)
    assert Decimal(mini["cost"]) == pytest.approx(Decimal("0.75"), abs=Decimal("0.0001"))
    assert models["mystery-model-x"]["cost"] is None and models["mystery-model-x"]["price_source"] == "unknown"
    assert "mystery-model-x" in report["unpriced_models"] and "gpt-4o-mini" not in report["unpriced_models"]
    assert Decimal(report["estimated_cost"]) == Decimal(mini["cost"])

    text = invoke(ledger, "report", "billing", "--from", "2025-10-01", "--to", "2025-10-31")
    assert "Total Requests: 7" in text.output
    assert f"Total Tokens: {report['total_tokens']:,}" in text.output
    assert "Estimated Cost: $0.75" in text.output
    assert "unknown price" in text.output


def test_billing_dates(ledger):
    report, _ = billing(ledger)
    assert report["from"] == 1_759_276_800_000 and report["to"] == 1_761_955_200_000  # all of October, UTC
    result = invoke(ledger, "report", "billing", "--from", "yesterday", "--to", "2025-10-31")
    assert result.exit_code == 1 and "YYYY-MM-DD" in result.output
    november = invoke(ledger, "report", "billing", "--from", T0 + 30 * 86_400_000, "--to", "2025-12-01", "--json")
    assert json.loads(november.stdout)["total_requests"] == 1
