"""Command line: ``run`` serves the local config, ``transcribe`` decodes files offline.

``make run`` calls ``python -m serve_app.cli run``; it makes sure the bundled model
exists, prints the URL and a ready-to-paste curl, then hands over to ``serve run``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"
TINY_MODEL_DIR = ROOT / "models" / "tiny_random"
PORT = 8765


def ensure_tiny_model(path: Path = TINY_MODEL_DIR) -> Path:
    """Build the seeded tiny model once if the folder is missing (no download)."""
    if not (path / "config.yaml").is_file():
        print(f"building the tiny test model in {path} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "make_test_model.py"),
                "tiny",
                "--out",
                str(path),
            ],
            check=True,
        )
    return path


def cmd_run(args: argparse.Namespace) -> int:
    ensure_tiny_model()
    config = Path(args.config)
    if not config.is_file():
        # Until the Serve app lands, show the engine end to end on a bundled clip.
        print(f"{config} not found: transcribing a synthetic sample with the engine instead")
        return _transcribe_sample()
    url = f"http://127.0.0.1:{PORT}"
    print(f"reverb-serve starting with {config} on {url}")
    print("when it says 'Deployed app', try:")
    print(
        f"  curl -s {url}/v1/audio/transcriptions -F file=@tests/data/sample.wav "
        "-F response_format=verbose_json -F 'timestamp_granularities[]=word'"
    )
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    os.chdir(ROOT)
    return subprocess.call(["serve", "run", str(config)], env=env)


def _transcribe_sample() -> int:
    import importlib.util

    from serve_app.engine.formats import render
    from serve_app.engine.model import load_model
    from serve_app.engine.transcriber import Transcriber

    spec = importlib.util.spec_from_file_location("mtm", ROOT / "scripts" / "make_test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    transcriber = Transcriber(load_model(str(TINY_MODEL_DIR), device="cpu"))
    transcript = transcriber.transcribe(module.speechlike_audio(8.0, seed=1))
    body, _ = render(transcript, "srt")
    print(body)
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from serve_app.engine.formats import render
    from serve_app.engine.model import load_model
    from serve_app.engine.options import DecodeOptions
    from serve_app.engine.transcriber import Transcriber

    model_ref = args.model or str(ensure_tiny_model())
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
    tr.add_argument("--model", default=None, help="model folder or name (default: bundled)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--mode", default="attention_rescoring")
    tr.add_argument("--verbatimicity", type=float, default=1.0)
    tr.add_argument("--format", default="text")
    tr.set_defaults(func=cmd_transcribe)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
