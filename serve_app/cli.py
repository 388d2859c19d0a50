"""Command line: ``run`` serves the local config, ``transcribe`` decodes files offline.

``make run`` calls ``python -m serve_app.cli run``; it makes sure the bundled model
exists, prints the URL and a ready-to-paste curl, then hands over to ``serve run``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from serve_app.engine.formats import RESPONSE_FORMATS
from serve_app.engine.options import DECODING_MODES

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"
DEMO_MODEL_DIR = ROOT / "models" / "demo"
DEMO_SAMPLE = ROOT / "tests" / "data" / "demo" / "heldout_00.opus"
PORT = 8765


def demo_model(path: Path = DEMO_MODEL_DIR) -> Path:
    """The committed demo model (real speech; rebuilt by `make demo-model`)."""
    if not (path / "config.yaml").is_file():
        raise SystemExit(
            f"the demo model is missing from {path}; restore it with `git checkout -- "
            "models/demo` or rebuild it with `make demo-model`"
        )
    return path


def cmd_run(args: argparse.Namespace) -> NoReturn:
    """Serve the config in the foreground; Ctrl-C stops Serve and the local Ray it started."""
    demo_model()
    sample = DEMO_SAMPLE.relative_to(ROOT)
    config = Path(args.config)
    url = f"http://127.0.0.1:{PORT}"
    print(f"reverb-serve: serving {config} on {url} (OpenAI base_url {url}/v1); Ctrl-C stops")
    print("once the log says the app is running (~40 s on 2 cores), open the page")
    print(f"  {url}/")
    print("in a browser (upload, record or live captions), or try:")
    print(
        f"  curl -s {url}/v1/audio/transcriptions -F file=@{sample} "
        "-F response_format=verbose_json -F 'timestamp_granularities[]=word'"
    )
    print("or stream a file at real time over the realtime WebSocket (openai SDK):")
    print(f"  .venv/bin/python examples/realtime_stream.py {sample}", flush=True)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    serve_bin = str(Path(sys.executable).parent / "serve")
    # Become `serve run` (same PID) rather than wait on it: a SIGTERM to this process
    # (a process manager's stop, `kill`, make passing it on) must reach Serve, which
    # then ends the local Ray it started. As a child it was left running, Ray and all.
    os.chdir(ROOT)
    os.execve(serve_bin, [serve_bin, "run", str(config)], env)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from serve_app.engine.formats import render
    from serve_app.engine.model import load_model
    from serve_app.engine.options import DecodeOptions
    from serve_app.engine.transcriber import Transcriber

    model_ref = args.model or str(demo_model())
    transcriber = Transcriber(load_model(model_ref, device=args.device))
    options = DecodeOptions(decoding_mode=args.mode, verbatimicity=args.verbatimicity)
    for path in args.files:
        transcript = transcriber.transcribe(Path(path).read_bytes(), options)
        body, _ = render(
            transcript,
            args.format,
            audio_name=Path(path).name,
            timestamp_granularities={"word", "segment"},
        )
        print(body if isinstance(body, str) else __import__("json").dumps(body, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reverb-serve")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve configs/local.yaml in the foreground")
    run.add_argument("--config", default=str(LOCAL_CONFIG))
    run.set_defaults(func=cmd_run)
    tr = sub.add_parser("transcribe", help="transcribe audio files without Ray")
    tr.add_argument("files", nargs="+")
    tr.add_argument("--model", default=None, help="model folder or name (default: models/demo)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--mode", default="attention_rescoring", choices=DECODING_MODES)
    tr.add_argument("--verbatimicity", type=float, default=1.0)
    tr.add_argument("--format", default="text", choices=RESPONSE_FORMATS)
    tr.set_defaults(func=cmd_transcribe)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
