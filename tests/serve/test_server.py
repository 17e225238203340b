"""The prediction container over real HTTP: the Dockerfile's uvicorn command, custom AIP_* routes and port, JSON logs
with request ids, metrics, the sample's request shapes, bad inputs, concurrent requests, body limits and timeouts, and
a schemathesis fuzz run against the app's own OpenAPI schema."""

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
        "FLANT5_SERVE_BODY_TIMEOUT_S": "2",
        # One engine for every batch size, so a dialogue's answer alone equals its answer inside a batch, which these
        # contract tests compare. The default also sends a lone dialogue to ONNX Runtime on x86, whose int8 rounding
        # breaks this random model's near-ties differently (tests/serve/test_cpu_backends.py covers that route).
        "FLANT5_SERVE_ONNX_SINGLE": "false",
    }
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with container_server(port, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until(base + HEALTH, 200, timeout=90, proc=proc)
        yield base, log


def _predict(base: str, body: object, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = kw.pop("headers", {"content-type": "application/json"})
    return httpx.post(base + PREDICT, content=content, headers=headers, timeout=30, **kw)


DIALOGUES = [
    "Amanda: I baked cookies. Do you want some?\nJerry: Sure!\nAmanda: I'll bring you tomorrow :-)",
    "Tom: Are we meeting at 6?\nAnna: Yes, at the station.\nTom: Great, see you.",
    "Kim: did you finish the report?\nLeo: almost, I need one more hour\nKim: ok, send it to me when done",
    "Olivia: Who are you voting for?\nOliver: Not sure yet.\nOlivia: Let's talk tonight.",
    "Mia: I lost my keys again\nNoah: check the kitchen\nMia: found them, thanks!",
    "Ben: lunch?\nZoe: can't today, meeting until 3\nBen: tomorrow then",
]


def test_contract_custom_routes_port_and_logs(server, talk_model: Path) -> None:
    base, log = server
    health = httpx.get(base + HEALTH)
    import importlib.util

    # `serve_backend: auto` on a machine without a GPU, with serve_onnx_single off (the fixture): CTranslate2's int8
    # engine when it is installed (the serve extra installs it), transformers otherwise (stated here, not asked of the
    # server's own chooser)
    auto = "ctranslate2" if importlib.util.find_spec("ctranslate2") else "hf"
    assert health.status_code == 200 and health.json() == {"status": "ready", "backend": auto, "device": "cpu"}
    assert httpx.head(base + HEALTH).status_code == 200
    assert httpx.get(base + "/health").status_code == 404  # the AIP_HEALTH_ROUTE replaced the default
    assert httpx.get(base + "/live").json() == {"status": "alive"}
    assert httpx.get(base + "/docs").status_code == 404  # serve_docs is off by default
    wrong = httpx.get(base + PREDICT)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST" and set(wrong.json()) == {"error"}
    r = _predict(base, {"instances": [DIALOGUES[0], {"dialogue": DIALOGUES[1]}], "parameters": {"max_new_tokens": 8}},
                 headers={"content-type": "application/json", "x-request-id": "req-42.a"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-42.a"
    assert 0 < float(r.headers["server-timing"].removeprefix("app;dur=")) < 30_000
    body = r.json()
    assert len(body["predictions"]) == 2 and all(isinstance(p, str) and p for p in body["predictions"])
    assert body["truncated"] == []
    generated = httpx.get(base + "/live").headers["x-request-id"]
    assert len(generated) == 32 and generated != httpx.get(base + "/live").headers["x-request-id"]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(line["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"} for line in lines)
    assert any("loaded model" in line["message"] and f"backend {auto}" in line["message"] for line in lines)
    assert any("serving backend" in line["message"] and line["logger"].endswith("hardware") for line in lines)  # why
    assert any(line.get("request_id") == "req-42.a" and "POST predict 200" in line["message"] for line in lines)
    assert str(talk_model) not in health.text


def _sample(base: str, instances: list, parameters: dict) -> list:
    r = _predict(base, {"instances": instances, "parameters": parameters})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_the_vertex_sample_request_shapes(server) -> None:
    """`endpoint.predict([[d]])` (a list instance) gets a list back in place; the SDK's 8.0 means 8; min > max clamps."""
    base, _ = server
    eight = {"max_new_tokens": 8}
    single = {d: _sample(base, [d], eight)[0] for d in DIALOGUES[:3]}
    assert len(set(single.values())) == 3
    got = _sample(base, [[DIALOGUES[0], DIALOGUES[1]], DIALOGUES[2], [DIALOGUES[2]]], eight)
    assert got == [[single[DIALOGUES[0]], single[DIALOGUES[1]]], single[DIALOGUES[2]], [single[DIALOGUES[2]]]]
    assert _sample(base, [DIALOGUES[1]], {"max_new_tokens": 8.0, "num_beams": 1.0}) == [single[DIALOGUES[1]]]
    clamped = _sample(base, [DIALOGUES[0]], {"max_new_tokens": 4, "min_new_tokens": 10})
    assert clamped == _sample(base, [DIALOGUES[0]], {"max_new_tokens": 4, "min_new_tokens": 4})
    assert single[DIALOGUES[0]].startswith(clamped[0]) and clamped[0] != single[DIALOGUES[0]]


def test_string_and_object_instances_agree_and_parameters_apply(server) -> None:
    base, _ = server
    as_str = _predict(base, {"instances": [DIALOGUES[2]], "parameters": {"max_new_tokens": 8}}).json()["predictions"]
    as_obj = _predict(base, {"instances": [{"dialogue": DIALOGUES[2]}], "parameters": {"max_new_tokens": 8}}).json()["predictions"]
    short = _predict(base, {"instances": [DIALOGUES[2]], "parameters": {"max_new_tokens": 2}}).json()["predictions"]
    assert as_str == as_obj
    assert as_str[0].startswith(short[0]) and len(short[0]) < len(as_str[0])  # greedy: the shorter run is a prefix


def test_parameters_are_the_generation_options_and_each_reaches_the_engine(server) -> None:
    """A request's `parameters` are `GenerationOverrides`' fields with the Params bounds (tightened by the serve_*
    limits) in the schema, and every one of them changes what the engine generates."""
    from flant5_lib.config import GenerationOverrides, Params, field_bounds

    base, _ = server
    schema = httpx.get(base + "/openapi.json").json()["components"]["schemas"]["Parameters"]["properties"]
    assert set(schema) == set(GenerationOverrides.model_fields)
    bounds = {name: next(a for a in spec["anyOf"] if a["type"] != "null") for name, spec in schema.items()}
    assert (bounds["num_beams"]["maximum"], bounds["max_new_tokens"]["maximum"]) == (2, 12)  # the server's limits
    assert bounds["repetition_penalty"]["maximum"] == field_bounds(Params, "repetition_penalty")["le"]
    assert bounds["no_repeat_ngram_size"]["maximum"] == field_bounds(Params, "no_repeat_ngram_size")["le"]
    plain = _sample(base, DIALOGUES[:3], {"max_new_tokens": 12})
    for option in ({"no_repeat_ngram_size": 1}, {"repetition_penalty": 5.0}, {"num_beams": 2}, {"max_new_tokens": 3}):
        assert _sample(base, DIALOGUES[:3], {"max_new_tokens": 12, **option}) != plain, option


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
    ("beams 99", {"instances": ["a: hi"], "parameters": {"num_beams": 99}}, 422,
     "parameters.num_beams: Input should be less than or equal to 2"),  # serve_max_beams_limit
    ("penalty over the params bound", {"instances": ["a: hi"], "parameters": {"repetition_penalty": 11}}, 422,
     "parameters.repetition_penalty: Input should be less than or equal to 10"),  # Params.repetition_penalty's le
    ("negative ngram size", {"instances": ["a: hi"], "parameters": {"no_repeat_ngram_size": -1}}, 422,
     "parameters.no_repeat_ngram_size: Input should be greater than or equal to 0"),
    ("tokens over limit", {"instances": ["a: hi"], "parameters": {"max_new_tokens": 13}}, 422, "parameters.max_new_tokens"),
    ("tokens zero", {"instances": ["a: hi"], "parameters": {"max_new_tokens": 0}}, 422, "parameters.max_new_tokens"),
    ("string number", {"instances": ["a: hi"], "parameters": {"max_new_tokens": "5"}}, 422, "parameters.max_new_tokens"),
    ("non-integral float", {"instances": ["a: hi"], "parameters": {"num_beams": 1.5}}, 422, "parameters.num_beams"),
    ("boolean number", {"instances": ["a: hi"], "parameters": {"max_new_tokens": True}}, 422, "parameters.max_new_tokens"),
    ("empty list instance", {"instances": [[]]}, 422, "instances[0]"),
    ("list of objects", {"instances": [[{"dialogue": "a: hi"}]]}, 422, "instances[0]"),
    ("too many in lists", {"instances": [["a: b"] * 3, ["a: b"] * 2]}, 422, f"at most {MAX_INSTANCES}"),
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
    """Two parameter groups in flight at once: every answer equals the same dialogue's answer alone, in its group."""
    base, _ = server
    groups = [{"max_new_tokens": 8}, {"max_new_tokens": 6, "num_beams": 2}]
    requests = [[DIALOGUES[i % 6], DIALOGUES[(i * 5 + 1) % 6]][: 1 + i % 2] for i in range(12)]
    singles = [{d: _sample(base, [d], g)[0] for d in DIALOGUES} for g in groups]
    for alone in singles:
        assert len(set(alone.values())) >= 3  # the outputs differ per dialogue, so a mix-up would show
    assert singles[0] != singles[1]  # and per group, so a batch mixing the groups would show

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [client.post(base + PREDICT, json={"instances": inst, "parameters": groups[i % 3 == 0]})
                     for i, inst in enumerate(requests)]
            calls.append(client.get(base + HEALTH))
            return await asyncio.gather(*calls)

    *answers, health = asyncio.run(fire())
    assert health.status_code == 200
    for i, (inst, r) in enumerate(zip(requests, answers)):
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == [singles[i % 3 == 0][d] for d in inst], i


def _metric_values(base: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_what_happened(server) -> None:
    base, _ = server
    before = _metric_values(base)
    for d in DIALOGUES[:3]:
        assert _predict(base, {"instances": [d, d], "parameters": {"max_new_tokens": 5}}).status_code == 200
    assert _predict(base, {"instances": []}).status_code == 422
    after = _metric_values(base)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("flant5_requests_total", route="predict", status="200") == 3
    assert delta("flant5_requests_total", route="predict", status="422") == 1
    assert delta("flant5_request_duration_seconds_count", route="predict") == 4
    assert delta("flant5_batch_size_sum") == 6  # six dialogues went through generate
    assert 0 < delta("flant5_generated_tokens_total") <= 6 * 5
    assert after[("flant5_queue_dialogues", ())] == 0 and after[("flant5_model_ready", ())] == 1
    assert after[("flant5_queue_cost_limit", ())] > 0  # measured from the batches


def test_a_body_that_never_arrives_gets_408(server) -> None:
    """Content-Length says 100, 10 bytes come: the server answers 408 after serve_body_timeout_s and closes."""
    import socket
    import time

    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n{\"instances".encode())
        started, data = time.monotonic(), b""
        while chunk := sock.recv(4096):
            data += chunk
        elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"not received within 2 s" in data and elapsed > 1.5  # the server waited its own 2 s timer
    assert elapsed < 60  # hang guard only
    assert httpx.get(base + HEALTH).status_code == 200


def test_schemathesis_fuzz_finds_no_server_error(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid and invalid bodies generated from /openapi.json (bounded, derandomized): none may get a 5xx."""
    import hypothesis.configuration
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    # Hypothesis caches (unicode tables, constants) in ./.hypothesis even with database=None: keep them in tmp_path
    monkeypatch.setattr(hypothesis.configuration, "__hypothesis_home_directory", tmp_path / "hypothesis")
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

