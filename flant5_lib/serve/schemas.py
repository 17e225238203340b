"""Request and response bodies, with the server's limits in the schema (so clients and fuzzers see the real bounds),
and the one-line 4xx a bad body gets. A request's `parameters` are `config.GenerationOverrides`' fields, with the
bounds of the Params fields tightened by serve_max_new_tokens_limit and serve_max_beams_limit."""

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from flant5_lib.config import GenerationOverrides, Params, generation_options_model

Dialogue = Annotated[str, StringConstraints(pattern=r"\S")]  # at least one visible character


def integral(value: Any) -> Any:
    """2.0 -> 2: Vertex's SDK sends every number as a protobuf double; 2.5 stays a float and is refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dialogue: Dialogue


class PredictResponse(BaseModel):
    predictions: list[str | list[str]] = Field(
        description="One summary per instance, in order; a list of summaries for an instance that is a list.")
    truncated: list[int] = Field(description="Indices of instances cut to the model's max_source_length (as in training).")


class ErrorBody(BaseModel):
    error: str


def request_model(p: Params) -> type[BaseModel]:
    """The request body with this server's bounds in the schema."""
    tokens, beams = p.serve_max_new_tokens_limit, p.serve_max_beams_limit
    Parameters = generation_options_model(  # noqa: N806 (a class)
        "Parameters", strict=True, int_before=integral,
        upper={"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": beams})

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        instances: list[Dialogue | Instance | Annotated[list[Dialogue], Field(min_length=1, max_length=p.serve_max_instances)]] = Field(
            min_length=1, max_length=p.serve_max_instances,
            description='Dialogue strings, {"dialogue": "..."} objects, or lists of dialogue strings '
                        f"(at most {p.serve_max_instances} dialogues in all).")
        parameters: Parameters = Field(default_factory=Parameters)  # type: ignore[valid-type]

    return PredictRequest


def gen_kwargs(parameters: BaseModel, model_params: Params, limits: Params) -> dict[str, Any]:
    """The request's options over the model's defaults, which are clamped to the server's limits (the request's own
    values are bounded by the schema); resolved by `inference.generation_kwargs`, as for evaluation and the CLI."""
    from flant5_lib.inference import generation_kwargs

    capped = model_params.model_copy(update={
        "max_new_tokens": min(model_params.max_new_tokens, limits.serve_max_new_tokens_limit),
        "num_beams": min(model_params.num_beams, limits.serve_max_beams_limit)})
    return generation_kwargs(capped, **parameters.model_dump(exclude_none=True))


class ClientError(Exception):
    """A request the client must change: a 4xx with a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def validation_message(errors: Sequence[Any]) -> tuple[int, str]:
    """400 for a body that is not JSON; otherwise 422 naming each bad field once."""
    parts: list[str] = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return 400, f"request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})"
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if len(loc) >= 2 and loc[0] == "instances" and loc[1].isdigit():
            text = (f"instances[{loc[1]}]: must be a non-empty dialogue string, {{\"dialogue\": \"...\"}}, "
                    "or a non-empty list of dialogue strings")
        else:
            text = f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid').removeprefix('Value error, ')}"
            if e.get("type") == "extra_forbidden":
                text = f"{'.'.join(loc)}: unknown field (allowed: instances, {ALLOWED_PARAMETERS})"
        if text not in parts:
            parts.append(text)
    return 422, "; ".join(parts) or "invalid request"


ALLOWED_PARAMETERS = "parameters." + ", ".join(GenerationOverrides.model_fields)
