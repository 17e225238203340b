"""The release's moves on the serving endpoint: a snapshot of its traffic split, the canary, the smoke tests, 100%,
and putting serving back exactly as the snapshot says when any later step fails (the exit handler calls `restore`).

Every move goes through the Vertex SDK, so the same code runs against Vertex and against the stand-in (whose
routing by the split is deterministic: `localstack/traffic.py`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError
from flant5_lib.vertex.jobs import find_endpoints, init_sdk

log = logging.getLogger(__name__)


def snapshot(params: Params) -> dict[str, Any]:
    """The endpoint named `endpoint_display_name` before the release touches it: its name (None: no endpoint yet),
    its traffic split and its deployed model ids."""
    found = find_endpoints(params)
    if not found:
        return {"endpoint": None, "traffic_split": {}, "deployed": []}
    endpoint = found[0]
    return {"endpoint": endpoint.resource_name, "traffic_split": dict(endpoint.traffic_split or {}),
            "deployed": [d.id for d in endpoint.list_models()]}


def deploy_canary(params: Params, model: Any, before: dict[str, Any]) -> dict[str, Any]:
    """Deploy `model` with `canary_traffic_percent` of the traffic (100 on an endpoint serving nothing: Vertex
    requires it). Returns the endpoint, the new deployed model id and its share."""
    from flant5_lib.vertex import jobs

    serving = any(v > 0 for v in before["traffic_split"].values())
    share = params.canary_traffic_percent if serving else 100
    endpoint = jobs.deploy_model(params.with_overrides(deploy_traffic_percentage=share), model)
    new = [d.id for d in endpoint.list_models() if d.id not in before["deployed"]]
    if len(new) != 1:
        raise CloudError(f"{endpoint.resource_name}: expected one new deployed model after the deploy, found {new}")
    return {"endpoint": endpoint.resource_name, "deployed_model_id": new[0], "share": share}


def smoke_online(params: Params, endpoint_name: str, deployed_id: str, dialogues: list[str]) -> dict[str, Any]:
    """Predictions until the canary itself (the response's deployedModelId) has answered `smoke_predictions`,
    each summary at least `smoke_min_summary_chars` long. Gives up after enough calls for its share to come up
    (Vertex draws the route at random; the stand-in follows the split exactly)."""
    aiplatform = init_sdk(params)
    endpoint = aiplatform.Endpoint(endpoint_name)
    share = max(int((endpoint.traffic_split or {}).get(deployed_id, 0)), 1)
    limit = params.smoke_predictions * (100 // share + 1) * 3
    served: list[str] = []
    calls = 0
    while len(served) < params.smoke_predictions and calls < limit:
        dialogue = dialogues[calls % len(dialogues)]
        calls += 1
        answer = endpoint.predict(instances=[{"dialogue": dialogue}], timeout=params.predict_timeout_s)
        if answer.deployed_model_id == deployed_id:
            served.extend(_summaries(answer.predictions))
    if len(served) < params.smoke_predictions:
        raise CloudError(f"smoke_predictions: the canary {deployed_id} answered {len(served)} of {calls} predictions; "
                         f"need {params.smoke_predictions} (raise canary_traffic_percent)")
    _check_lengths(params, served, "online")
    return {"calls": calls, "canary_answers": len(served), "summaries": served}


def smoke_batch(params: Params, model: Any, dialogues: list[str], prefix: str) -> dict[str, Any]:
    """A BatchPredictionJob of the new version over a small JSONL (the same container, offline-batch path)."""
    from flant5_lib import storage
    from flant5_lib.vertex import jobs

    source = storage.write_text(f"{prefix}/input.jsonl", "".join(json.dumps({"dialogue": d}) + "\n" for d in dialogues))
    job = jobs.batch_predict(params, model, source, f"{prefix}/output", sync=True)
    out_dir = job.output_info.gcs_output_directory
    lines = [json.loads(line) for rel in storage.list_blobs(out_dir)
             if rel.rsplit("/", 1)[-1].startswith("prediction.results")
             for line in storage.read_text(f"{out_dir.rstrip('/')}/{rel}").splitlines() if line.strip()]
    summaries = [s for row in lines for s in _summaries([row.get("prediction")])]
    if len(summaries) != len(dialogues):
        raise CloudError(f"batch_smoke_examples: the batch job {job.resource_name} returned {len(summaries)} "
                         f"predictions for {len(dialogues)} dialogues")
    _check_lengths(params, summaries, "batch")
    return {"job": job.resource_name, "state": str(job.state.name), "output": out_dir, "predictions": len(summaries)}


def full_traffic(params: Params, endpoint_name: str, deployed_id: str) -> dict[str, int]:
    """All the traffic to the new deployed model; the others stay deployed at 0% until `retire`."""
    aiplatform = init_sdk(params)
    endpoint = aiplatform.Endpoint(endpoint_name)
    others = [d.id for d in endpoint.list_models() if d.id != deployed_id]
    endpoint.update(traffic_split={deployed_id: 100, **{o: 0 for o in others}})
    return dict(aiplatform.Endpoint(endpoint_name).traffic_split)


def retire(params: Params, endpoint_name: str, deployed_id: str) -> list[str]:
    """Undeploy every deployed model but the new one, once it is the default version (the previous version stays in
    the registry: `flant5 pipeline rollback` and a deploy bring it back)."""
    aiplatform = init_sdk(params)
    endpoint = aiplatform.Endpoint(endpoint_name)
    others = [d.id for d in endpoint.list_models() if d.id != deployed_id]
    for other in others:
        endpoint.undeploy(other, traffic_split={deployed_id: 100})
    return others


def restore(params: Params, before: dict[str, Any]) -> dict[str, Any]:
    """Serving as `before` recorded it: its split back, every deployed model it did not have undeployed."""
    if not before.get("endpoint"):
        found = find_endpoints(params)
        if not found:
            return {"restored": False, "reason": "no endpoint existed and none was created"}
        before = {**before, "endpoint": found[0].resource_name}
    aiplatform = init_sdk(params)
    endpoint = aiplatform.Endpoint(before["endpoint"])
    extra = [d.id for d in endpoint.list_models() if d.id not in before["deployed"]]
    if extra and before["traffic_split"]:
        endpoint.update(traffic_split={**before["traffic_split"], **{e: 0 for e in extra}})
    for dmid in extra:
        endpoint.undeploy(dmid, traffic_split=before["traffic_split"] or None)
    after = dict(aiplatform.Endpoint(before["endpoint"]).traffic_split or {})
    return {"restored": True, "undeployed": extra, "traffic_split": after}


def _summaries(predictions: list[Any]) -> list[str]:
    out: list[str] = []
    for p in predictions:
        if isinstance(p, list):
            out.extend(str(x) for x in p)
        elif isinstance(p, dict):
            out.append(str(p.get("summary", "")))
        elif p is not None:
            out.append(str(p))
    return out


def _check_lengths(params: Params, summaries: list[str], where: str) -> None:
    short = [s for s in summaries if len(s.strip()) < params.smoke_min_summary_chars]
    if short:
        raise CloudError(f"smoke_min_summary_chars: {len(short)} of {len(summaries)} {where} smoke summaries are "
                         f"shorter than {params.smoke_min_summary_chars} characters, e.g. {short[0][:60]!r}")
