"""Container entry point: `uvicorn main:app --host 0.0.0.0 --port 8080` from this folder (see serving/Dockerfile)."""

from flant5_lib.serve.app import create_app

app = create_app()
