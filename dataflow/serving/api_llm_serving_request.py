"""APILLMServing_request: DataFlow's text serving (``from dataflow.serving import APILLMServing_request``).

DataFlow's text pipelines ask an OpenAI-compatible chat-completions endpoint through this class. Here it is
:class:`~dataflow.serving.api_vlm_serving_openai.APIVLMServing_openai` under DataFlow's name and parameters
(``api_url`` may be the full ``.../v1/chat/completions`` URL, as DataFlow writes it; ``connect_timeout`` /
``read_timeout``), so the same retries, bounded concurrency and reasons for failed requests apply; a failed
request is None in ``generate_from_input``'s list (DataFlow: an empty or error string).
"""

from __future__ import annotations

from typing import Any

from dataflow.serving.api_vlm_serving_openai import APIVLMServing_openai
from dataflow.serving.base import DEFAULT_SYSTEM_PROMPT


class APILLMServing_request(APIVLMServing_openai):
    """DataFlow's ``APILLMServing_request(api_url, key_name_of_api_key, model_name, temperature, max_workers,
    max_retries, connect_timeout, read_timeout)`` over this project's OpenAI-compatible client.

    Parameters:
        api_url: the chat-completions URL (``https://api.openai.com/v1/chat/completions``) or its base
        key_name_of_api_key: environment variable holding the API key (never the key itself)
        model_name: the model the server serves
        temperature: sampling temperature of every request
        max_workers: requests in flight at once
        max_retries: retries of a request that timed out or got 429 / 5xx
        connect_timeout: seconds to connect (DataFlow's tuple's first half)
        read_timeout: seconds to wait for an answer
        configs: further ``APIVLMServing_openai`` parameters (``max_tokens``, ``top_p``, ``extra_body``...)
    """

    def __init__(
        self,
        api_url: str = "https://api.openai.com/v1/chat/completions",
        key_name_of_api_key: str = "DF_API_KEY",
        model_name: str = "gpt-4o",
        temperature: float = 0.0,
        max_workers: int = 10,
        max_retries: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        **configs: Any,
    ):
        configs.pop("timeout", None)  # DataFlow's deprecated spelling of read_timeout
        super().__init__(
            api_url=api_url,
            key_name_of_api_key=key_name_of_api_key,
            model_name=model_name,
            temperature=temperature,
            max_workers=max_workers,
            max_retries=max_retries,
            timeout=float(connect_timeout) + float(read_timeout),
            **configs,
        )

    def generate_from_input(
        self,
        user_inputs: list[str],
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        json_schema: dict | None = None,
        **media: Any,
    ) -> list[str | None]:
        """DataFlow's call: one answer per input (``json_schema``: the answer's JSON schema, sent as
        OpenAI's ``response_format``)."""
        serving = self if json_schema is None else with_json_schema(self, json_schema)
        return APIVLMServing_openai.generate_from_input(serving, user_inputs, system_prompt, **media)


def with_json_schema(serving: APIVLMServing_openai, json_schema: dict) -> APIVLMServing_openai:
    """A copy of ``serving`` whose requests ask for answers in ``json_schema`` (OpenAI's
    ``response_format``, which vLLM, SGLang and hosted APIs honour)."""
    if not isinstance(serving, APIVLMServing_openai):
        raise ValueError(f"json_schema needs an OpenAI-compatible serving, got {type(serving).__name__}")
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema}}
    copy = type(serving).__new__(type(serving))
    copy.__dict__.update(serving.__dict__)
    copy.extra_body = {**(serving.extra_body or {}), "response_format": schema}
    return copy
