"""End-to-end check with the official `openai` Python SDK against a running keyward.

Usage: openai_sdk.py BASE_URL KEY calls     -> prints the usage totals it expects
       openai_sdk.py BASE_URL KEY revoked   -> exits 0 if the key is refused
"""
import json
import sys

import openai


def calls(client):
    models = client.models.list()
    assert "keyward-simulated" in [m.id for m in models.data], models

    messages = [{"role": "user", "content": "Say hello to keyward"}]
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    text = plain.choices[0].message.content
    assert "simulated" in text, text
    usage = plain.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0, usage

    # Streamed without include_usage: the gateway asks upstream for usage but must
    # not show the extra chunk to this client.
    pieces = []
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True):
        assert chunk.usage is None, "usage chunk leaked to a client that did not ask for it"
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == text, ("".join(pieces), text)

    # Streamed with include_usage: the last chunk carries usage and no choices.
    last = None
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        last = chunk
    assert last is not None and last.usage is not None and last.choices == [], last
    assert last.usage.prompt_tokens == usage.prompt_tokens
    assert last.usage.completion_tokens == usage.completion_tokens

    # models list + 3 completions; three of them generated tokens.
    print(json.dumps({
        "requests": 4,
        "input_tokens": 3 * usage.prompt_tokens,
        "output_tokens": 3 * usage.completion_tokens,
    }))


def revoked(client):
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        assert "revoked" in str(e), str(e)
        print("refused")
        return
    raise SystemExit("a revoked key was accepted")


def main():
    base_url, key, mode = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    {"calls": calls, "revoked": revoked}[mode](client)


if __name__ == "__main__":
    main()
