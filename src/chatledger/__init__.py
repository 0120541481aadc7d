"""chatledger: an OpenAI-compatible LLM gateway that records every exchange."""

__version__ = "0.1.0"
