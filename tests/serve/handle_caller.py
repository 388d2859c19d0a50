"""A second deployment that uses the transcription app through its handle.

It stands for any Serve deployment (a pipeline stage, another model) that wants a
transcript without HTTP: it asks for the app's ingress handle by name and calls the
same ``transcribe`` method the HTTP route drives. Deployed by the test conftest as
``tests.serve.handle_caller:build``.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application


@serve.deployment(ray_actor_options={"num_cpus": 0})
class HandleCaller:
    def __init__(self, app_name: str) -> None:
        self._app_name = app_name

    async def transcribe(self, audio: bytes, options: dict[str, Any]) -> dict[str, Any]:
        handle = serve.get_app_handle(self._app_name)
        transcript = await handle.transcribe.remote(audio, **options)
        return transcript.model_dump()


def build(args: dict[str, Any]) -> Application:
    return HandleCaller.bind(args.get("app_name", "reverb"))
