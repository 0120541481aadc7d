"""The query API over the store: sessions, requests, responses and usage (seed 000)."""

from chatledger.api.app import build_query_api

__all__ = ["build_query_api"]
