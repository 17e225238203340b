"""The server under pressure, over real HTTP (uvicorn in a thread): overload is shed at once with 429 + Retry-After
while admitted work is answered, `/health` stays fast while 1.4 MB requests are parsed and tokenised, and cutting
over-long text before tokenising gives exactly the tokens the full text would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from tests.helpers.serve import Gate, make_talkative_model, thread_server, wait_until

from flant5_lib.config import Params
from flant5_lib.procs import free_port
from flant5_lib.serve.app import ServeSettings, State, create_app

DIALOGUE = "Tom: Are we meeting at 6?\nAnna: Yes, at the station.\nTom: Great, see you."


@pytest.fixture(scope="module")
def talk_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_talkative_model(tiny_model_dir, tmp_path_factory.mktemp("pressure") / "talk")


def _long_dialogue(chars: int) -> str:
    turns, n = [], 0
    while sum(len(t) + 1 for t in turns) < chars:
        turns.append(f"Person{n % 7}: this is turn {n} of a very long conversation about lunch plans and the weather")
        n += 1
    return "\n".join(turns)


def test_overload_is_shed_at_once_and_the_server_keeps_serving(talk_model: Path) -> None:
    """One admitted request is held in the model (a gate the test opens), so the queue is full by construction: the
    eleven that follow are refused while it is still running, which is what "at once, not after queueing" means."""
    params = Params(serve_max_queue_dialogues=4, serve_max_instances=4, serve_max_batch_size=4,
                    serve_max_queue_cost=10**9,  # a fixed cost budget: only the dialogue bound can refuse
                    serve_onnx_single=False)  # one engine: the lone reference equals the same dialogue in a batch
    app = create_app(ServeSettings(model_dir=str(talk_model), params=params, exit_on_failure=False))
    body = {"instances": [DIALOGUE] * 4, "parameters": {"max_new_tokens": 8}}

    async def burst(base: str, gate: Gate) -> tuple[httpx.Response, list[httpx.Response], bool]:
        async with httpx.AsyncClient(timeout=60) as client:
            admitted = asyncio.ensure_future(client.post(base + "/predict", json=body))
            await asyncio.to_thread(gate.wait_entered, 1)  # its 4 dialogues are in the model: the queue is full
            refused = await asyncio.gather(*(client.post(base + "/predict", json=body) for _ in range(11)))
            still_running = not admitted.done()
            gate.open()
            return await admitted, refused, still_running

    with thread_server(app, free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        expected = httpx.post(base + "/predict", json={**body, "instances": [DIALOGUE]}, timeout=60).json()["predictions"]
        backend, gate = app.state.serve.backend, Gate()
        backend.generate = gate.wrap(backend.generate)
        ok, shed, still_running = asyncio.run(burst(base, gate))
        assert ok.status_code == 200 and ok.json()["predictions"] == expected * 4, ok.text
        assert [r.status_code for r in shed] == [429] * 11, [r.text for r in shed]
        assert still_running  # every refusal came back while the admitted request was still in the model
        for r in shed:
            assert "busy" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
        assert httpx.post(base + "/predict", json={"instances": [DIALOGUE]}, timeout=60).status_code == 200
        metrics = httpx.get(base + "/metrics").text
        assert 'flant5_rejected_requests_total{reason="queue_dialogues"} 11.0' in metrics
        assert "flant5_queue_dialogues 0.0" in metrics


def test_health_stays_fast_while_big_requests_are_parsed_and_tokenised(talk_model: Path) -> None:
    """Parsing and tokenising 1.4 MB bodies are held at gates the test opens, so /health is probed while that work is
    certainly in progress; if either ran on the event loop, the probe could not be answered until the gate opened."""
    app = create_app(ServeSettings(model_dir=str(talk_model), exit_on_failure=False))
    big = {"instances": [_long_dialogue(1_400_000)], "parameters": {"max_new_tokens": 4}}

    async def scenario(base: str, parse: Gate, encode: Gate) -> tuple[list[httpx.Response], list[int]]:
        async with httpx.AsyncClient(timeout=120) as client:
            posts = asyncio.ensure_future(asyncio.gather(*(client.post(base + "/predict", json=big) for _ in range(4))))
            probes = []
            for gate, held in ((parse, 2), (encode, 2)):  # the pool runs two at a time; the other two wait behind
                await asyncio.to_thread(gate.wait_entered, held)
                for _ in range(3):
                    probes.append((await client.get(base + "/health", timeout=10)).status_code)  # hang guard, not a speed bound
                gate.open()
            return await posts, probes

    with thread_server(app, free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        state, parse, encode = app.state.serve, Gate(), Gate()
        state.parse, state.encode = parse.wrap(state.parse), encode.wrap(state.encode)
        answers, probes = asyncio.run(scenario(base, parse, encode))
    assert probes == [200] * 6
    assert all(r.status_code == 200 and r.json()["truncated"] == [0] for r in answers), [r.text[:200] for r in answers]
    assert len(parse.threads) == len(encode.threads) == 4
    assert all(name.startswith("parse") for name in parse.threads + encode.threads), parse.threads + encode.threads


@pytest.mark.parametrize("case", ["long turns", "blank run", "short"])
def test_cutting_by_characters_keeps_the_tokens_of_the_full_text(t5_tokenizer_dir: Path, talk_model: Path, case: str) -> None:
    """With the real T5 vocabulary (it folds runs of blanks into one, which is what makes a cut fall short)."""
    from flant5_lib.modeling import load_tokenizer
    from flant5_lib.preprocess import encode_sources

    tokenizer = load_tokenizer(str(t5_tokenizer_dir))
    dialogue = {
        "long turns": _long_dialogue(200_000),
        "blank run": "Anna: hi" + " \t" * 3_000 + "\nBen: " + "see you at noon " * 40,  # 6,000 blanks, one token
        "short": DIALOGUE,
    }[case]
    state = State(ServeSettings(model_dir=str(talk_model), exit_on_failure=False))
    state.backend = SimpleNamespace(tokenizer=tokenizer)
    for p in (Params(), Params(max_source_length=64)):
        state.model_params = p
        expected = encode_sources(tokenizer, [dialogue, DIALOGUE], p)
        assert state.encode([dialogue, DIALOGUE]) == expected
        assert expected[1][0] == (case == "long turns" or (case == "blank run" and p.max_source_length == 64))
    state.close()
