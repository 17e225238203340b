"""What the server reads at start-up: Vertex's AIP_* variables, the FLANT5_* ones, and the serve_* Params.

Each default is stated once: here for the server's own fields, in `config.Params` for the serve_* limits and the
generation defaults (which a YAML file, FLANT5_PARAMS, and FLANT5_SERVE_* variables override).
"""

import os
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flant5_lib.config import Params, load_params, parse_set
from flant5_lib.errors import ParamsError

ENV_PREFIX = "FLANT5_"  # FLANT5_SERVE_MAX_BATCH_SIZE=1 sets serve_max_batch_size, and so on
DEFAULT_MODEL_DIRS = ("model", "serving/model")  # the Dockerfile copies a baked-in model to serving/model


def serve_params(params_file: str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Params from the YAML file (if any), then the FLANT5_SERVE_* variables, then explicit overrides (`--set`)."""
    from_env = {
        name: value
        for name in Params.model_fields
        if name.startswith("serve_") and (value := os.environ.get(ENV_PREFIX + name.upper())) is not None
    }
    return load_params(params_file or None, {**parse_set([f"{k}={v}" for k, v in from_env.items()]), **(overrides or {})})


class ServeSettings(BaseSettings):
    """Everything the server reads at start-up. Explicit values beat the environment; an empty variable counts as unset."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, populate_by_name=True,
                                      arbitrary_types_allowed=True)

    model_dir: str | None = Field(None, description="Local model folder (--model / FLANT5_MODEL_DIR).")
    storage_uri: str | None = Field(None, validation_alias="AIP_STORAGE_URI",
                                    description="AIP_STORAGE_URI: gs:// model folder downloaded at start-up.")
    http_port: int = Field(8080, validation_alias="AIP_HTTP_PORT", description="AIP_HTTP_PORT.")
    health_route: str = Field("/health", validation_alias="AIP_HEALTH_ROUTE", description="AIP_HEALTH_ROUTE.")
    predict_route: str = Field("/predict", validation_alias="AIP_PREDICT_ROUTE", description="AIP_PREDICT_ROUTE.")
    live_route: str = Field("/live", description="Liveness: answers at once, even while the model loads.")
    device: str | None = Field(None, description="FLANT5_DEVICE (cpu, cuda); default: GPU when present.")
    params: Annotated[Params, NoDecode] = Field(
        default_factory=serve_params,
        description="serve_* limits and generation defaults: FLANT5_PARAMS names a YAML params file; FLANT5_SERVE_* "
        "variables override its fields.")
    exit_on_failure: bool = Field(True, description="End the process (code 1) when the model cannot load. Tests "
                                  "that run the app inside their own process turn it off.")
    load_hook: Callable[[], None] | None = Field(None, exclude=True, description="Called before loading (tests).")

    @field_validator("params", mode="before")
    @classmethod
    def _params_file(cls, value: Any) -> Any:
        return serve_params(value) if isinstance(value, str) else value  # FLANT5_PARAMS: the file's path

    @classmethod
    def from_env(
        cls, overrides: dict[str, Any] | None = None, params_file: str | None = None, **fields: Any
    ) -> "ServeSettings":
        """The environment, then explicit values: `params_file` replaces FLANT5_PARAMS and `overrides` (`--set`) go
        over both. A bad variable is one `ParamsError` naming it."""
        given = {k: v for k, v in fields.items() if v is not None}
        if params_file or overrides:
            given["params"] = serve_params(params_file or os.environ.get(ENV_PREFIX + "PARAMS"), overrides)
        try:
            return cls(**given)
        except ValidationError as err:
            names = {n: (f.validation_alias if isinstance(f.validation_alias, str) else ENV_PREFIX + n.upper())
                     for n, f in cls.model_fields.items()}
            raise ParamsError("; ".join(f"{names.get(str(e['loc'][0]), e['loc'][0])}={e['input']!r}: {e['msg']}"
                                        for e in err.errors())) from None
