"""The prediction container over real HTTP: the Dockerfile's uvicorn command, custom AIP_* routes and port, bad inputs,
concurrent requests, body limits, and a schemathesis fuzz run against the app's own OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from tests.helpers.serve import container_server, make_talkative_model, wait_until
from flant5_lib.procs import free_port

PREDICT = "/v1/endpoints/e1/deployedModels/m1:predict"
HEALTH = "/v1/endpoints/e1/deployedModels/m1"
MAX_INSTANCES = 4


@pytest.fixture(scope="module")
def talk_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_talkative_model(tiny_model_dir, tmp_path_factory.mktemp("serve") / "talk")


@pytest.fixture(scope="module")
def server(talk_model: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    env = {
        "AIP_PREDICT_ROUTE": PREDICT,
        "AIP_HEALTH_ROUTE": HEALTH,
        "FLANT5_MODEL_DIR": str(talk_model),
        "FLANT5_SERVE_MAX_INSTANCES": str(MAX_INSTANCES),
        "FLANT5_SERVE_MAX_NEW_TOKENS_LIMIT": "12",
        "FLANT5_SERVE_MAX_BEAMS_LIMIT": "2",
        "FLANT5_SERVE_MAX_WAIT_MS": "30",
        "FLANT5_SERVE_MAX_BATCH_SIZE": "8",
    }
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with container_server(port, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until(base + HEALTH, 200, timeout=90, proc=proc)
        yield base, log


def _predict(base: str, body: object, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(base + PREDICT, content=content, headers={"content-type": "application/json"}, timeout=30, **kw)


DIALOGUES = [
    "Amanda: I baked cookies. Do you want some?\nJerry: Sure!\nAmanda: I'll bring you tomorrow :-)",
    "Tom: Are we meeting at 6?\nAnna: Yes, at the station.\nTom: Great, see you.",
    "Kim: did you finish the report?\nLeo: almost, I need one more hour\nKim: ok, send it to me when done",
    "Olivia: Who are you voting for?\nOliver: Not sure yet.\nOlivia: Let's talk tonight.",
    "Mia: I lost my keys again\nNoah: check the kitchen\nMia: found them, thanks!",
    "Ben: lunch?\nZoe: can't today, meeting until 3\nBen: tomorrow then",
]


def test_contract_custom_routes_port_and_logs(server) -> None:
    base, log = server
    health = httpx.get(base + HEALTH)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert httpx.get(base + "/health").status_code == 404  # the AIP_HEALTH_ROUTE replaced the default
    assert httpx.get(base + "/live").json() == {"status": "alive"}
    r = _predict(base, {"instances": [DIALOGUES[0], {"dialogue": DIALOGUES[1]}], "parameters": {"max_new_tokens": 8}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 2 and all(isinstance(p, str) and p for p in body["predictions"])
    assert body["truncated"] == []
    text = log.read_text()
    assert "loaded model" in text and "backend hf" in text and "device cpu" in text


def test_string_and_object_instances_agree_and_parameters_apply(server) -> None:
    base, _ = server
    as_str = _predict(base, {"instances": [DIALOGUES[2]], "parameters": {"max_new_tokens": 8}}).json()["predictions"]
    as_obj = _predict(base, {"instances": [{"dialogue": DIALOGUES[2]}], "parameters": {"max_new_tokens": 8}}).json()["predictions"]
    short = _predict(base, {"instances": [DIALOGUES[2]], "parameters": {"max_new_tokens": 2}}).json()["predictions"]
    assert as_str == as_obj
    assert as_str[0].startswith(short[0]) and len(short[0]) < len(as_str[0])  # greedy: the shorter run is a prefix


BAD = [
    ("not json", b"{instances: [", 400, "not valid JSON"),
    ("empty body", b"", 400, "empty"),
    ("no instances", {"parameters": {}}, 422, "instances"),
    ("empty list", {"instances": []}, 422, "instances"),
    ("too many", {"instances": ["a: b"] * (MAX_INSTANCES + 1)}, 422, f"at most {MAX_INSTANCES}"),
    ("number instance", {"instances": [42]}, 422, "instances[0]"),
    ("wrong key", {"instances": ["a: hi", {"dialog": "x"}]}, 422, "instances[1]"),
    ("extra key", {"instances": [{"dialogue": "a: hi", "id": 3}]}, 422, "instances[0]"),
    ("blank dialogue", {"instances": ["  \n\t "]}, 422, "instances[0]"),
    ("not an object", ["a: hi"], 422, "body"),
    ("unknown parameter", {"instances": ["a: hi"], "parameters": {"temperature": 0.7}}, 422, "parameters.temperature"),
    ("beams over limit", {"instances": ["a: hi"], "parameters": {"num_beams": 3}}, 422, "parameters.num_beams"),
    ("tokens over limit", {"instances": ["a: hi"], "parameters": {"max_new_tokens": 13}}, 422, "parameters.max_new_tokens"),
    ("tokens zero", {"instances": ["a: hi"], "parameters": {"max_new_tokens": 0}}, 422, "parameters.max_new_tokens"),
    ("string number", {"instances": ["a: hi"], "parameters": {"max_new_tokens": "5"}}, 422, "parameters.max_new_tokens"),
    ("min over max", {"instances": ["a: hi"], "parameters": {"max_new_tokens": 4, "min_new_tokens": 6}}, 422, "min_new_tokens"),
    ("unknown top-level", {"instances": ["a: hi"], "extra": 1}, 422, "extra"),
]


@pytest.mark.parametrize(("name", "body", "status", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx(server, name: str, body: object, status: int, needle: str) -> None:
    base, _ = server
    r = _predict(base, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"]


def test_oversized_bodies_get_413_and_server_stays_up(server) -> None:
    base, _ = server
    big = json.dumps({"instances": ["a: " + "x" * 1_600_000]}).encode()
    r = _predict(base, big)  # Content-Length says it all
    assert r.status_code == 413 and "1.5 MB" in r.json()["error"]

    def chunks():  # no Content-Length: chunked transfer, the size only shows while streaming
        yield b'{"instances": ["a: '
        for _ in range(40):
            yield b"y" * 50_000
        yield b'"]}'

    r = httpx.post(base + PREDICT, content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]
    small = b'{"instances": ["a: ' + b"z" * 1000 + b'"]}'
    r = httpx.post(base + PREDICT, content=iter([small[:10], small[10:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200  # a small chunked body still works
    assert httpx.get(base + HEALTH).status_code == 200


def test_long_dialogue_is_truncated_like_training_and_reported(server) -> None:
    base, _ = server
    long = "\n".join(f"Person{i}: this is turn number {i} of a very long conversation" for i in range(200))
    r = _predict(base, {"instances": [DIALOGUES[0], long], "parameters": {"max_new_tokens": 4}})
    assert r.status_code == 200
    assert r.json()["truncated"] == [1] and len(r.json()["predictions"]) == 2


def test_concurrent_requests_answered_in_order(server) -> None:
    base, log = server
    params = {"max_new_tokens": 8}
    requests = [[DIALOGUES[i % 6], DIALOGUES[(i * 5 + 1) % 6]][: 1 + i % 2] for i in range(12)]
    singles = {d: _predict(base, {"instances": [d], "parameters": params}).json()["predictions"][0] for d in DIALOGUES}
    assert len(set(singles.values())) >= 3  # the outputs differ per dialogue, so a mix-up would show

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            other = {"max_new_tokens": 6}  # a second parameter group must not share a batch with the first
            calls = [client.post(base + PREDICT, json={"instances": inst, "parameters": params if i % 3 else other})
                     for i, inst in enumerate(requests)]
            calls.append(client.get(base + HEALTH))
            return await asyncio.gather(*calls)

    *answers, health = asyncio.run(fire())
    assert health.status_code == 200
    for i, (inst, r) in enumerate(zip(requests, answers)):
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        if i % 3:
            assert got == [singles[d] for d in inst]
        else:
            assert all(singles[d].startswith(g) for d, g in zip(inst, got)) and len(got) == len(inst)


def test_schemathesis_fuzz_finds_no_server_error(server) -> None:
    """Valid and invalid bodies generated from /openapi.json (bounded, derandomized): none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    base, _ = server
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    seen: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [(GenerationMode.POSITIVE, 30)]
        if operation.method.upper() == "POST":  # GET routes take no input: nothing to make invalid
            modes.append((GenerationMode.NEGATIVE, 30))
        for mode, examples in modes:

            @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case) -> None:
                response = case.call(base_url=base, timeout=30)
                seen.append((f"{case.method} {case.path} {mode}", response.status_code))
                assert response.status_code < 500, f"{case.method} {case.path} body={case.body!r} -> {response.status_code}"

            fuzz()
    assert {path for path, _ in seen} >= {f"POST {PREDICT} positive", f"POST {PREDICT} negative"}
    assert any(code == 200 for path, code in seen if path.startswith("POST"))  # valid bodies did get answers
    assert any(400 <= code < 500 for path, code in seen if path.startswith("POST"))
    assert httpx.get(base + HEALTH).status_code == 200
