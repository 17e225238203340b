"""The server under pressure, over real HTTP (uvicorn in a thread): overload is shed at once with 429 + Retry-After
while admitted work is answered, `/health` stays fast while 1.4 MB requests are parsed and tokenised, and cutting
over-long text before tokenising gives exactly the tokens the full text would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from tests.helpers.serve import make_talkative_model, thread_server, wait_until

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
    params = Params(serve_max_queue_dialogues=4, serve_max_instances=4, serve_max_batch_size=4)
    app = create_app(ServeSettings(model_dir=str(talk_model), params=params, exit_on_failure=False))
    body = {"instances": [DIALOGUE] * 4, "parameters": {"max_new_tokens": 96, "min_new_tokens": 96}}

    async def burst(base: str) -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def one() -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                r = await client.post(base + "/predict", json=body)
                return r, time.perf_counter() - started
            return await asyncio.gather(*(one() for _ in range(12)))

    with thread_server(app, free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        answers = asyncio.run(burst(base))
        ok = [r for r, _ in answers if r.status_code == 200]
        shed = [(r, t) for r, t in answers if r.status_code == 429]
        assert len(ok) + len(shed) == 12, [r.text for r, _ in answers]
        assert ok and len(shed) >= 6  # only one 4-dialogue request fits the queue at a time
        for r, seconds in shed:
            assert "busy" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
        slowest_ok = max(t for (r, t) in answers if r.status_code == 200)
        assert max(t for _, t in shed) < min(1.0, slowest_ok)  # refused at once, not after queueing
        assert all(len(r.json()["predictions"]) == 4 for r in ok)
        assert httpx.post(base + "/predict", json={"instances": [DIALOGUE]}, timeout=60).status_code == 200
        metrics = httpx.get(base + "/metrics").text
        assert f'flant5_rejected_requests_total{{reason="queue_dialogues"}} {float(len(shed))}' in metrics
        assert "flant5_queue_dialogues 0.0" in metrics


def test_health_stays_fast_while_big_requests_are_parsed_and_tokenised(talk_model: Path) -> None:
    app = create_app(ServeSettings(model_dir=str(talk_model), exit_on_failure=False))
    big = {"instances": [_long_dialogue(1_400_000)], "parameters": {"max_new_tokens": 4}}

    async def scenario(base: str) -> tuple[list[httpx.Response], list[float]]:
        async with httpx.AsyncClient(timeout=120) as client:
            posts = asyncio.gather(*(client.post(base + "/predict", json=big) for _ in range(4)))
            probes: list[float] = []
            task = asyncio.ensure_future(posts)
            while not task.done():
                started = time.perf_counter()
                assert (await client.get(base + "/health")).status_code == 200
                probes.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            return await task, probes

    with thread_server(app, free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        answers, probes = asyncio.run(scenario(base))
    assert all(r.status_code == 200 and r.json()["truncated"] == [0] for r in answers), [r.text[:200] for r in answers]
    assert len(probes) >= 5 and max(probes) < 0.5, sorted(probes)[-5:]


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
