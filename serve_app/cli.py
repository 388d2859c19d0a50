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
SAMPLE_WAV = ROOT / "models" / "sample.wav"
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


def ensure_sample(path: Path = SAMPLE_WAV) -> Path:
    """A short speech-like clip for the printed curl (the demo model will bring real speech)."""
    if not path.is_file():
        import io
        import wave

        import numpy as np

        audio = _script_module().speechlike_audio(8.0, seed=1)
        pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return path


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mtm", ROOT / "scripts" / "make_test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_run(args: argparse.Namespace) -> int:
    """Serve the config in the foreground; Ctrl-C stops Serve and the local Ray it started."""
    ensure_tiny_model()
    sample = ensure_sample().relative_to(ROOT)
    config = Path(args.config)
    url = f"http://127.0.0.1:{PORT}"
    print(f"reverb-serve: serving {config} on {url} (OpenAI base_url {url}/v1); Ctrl-C stops")
    print("once the log says the app is running (~40 s on 2 cores), try:")
    print(
        f"  curl -s {url}/v1/audio/transcriptions -F file=@{sample} "
        "-F response_format=verbose_json -F 'timestamp_granularities[]=word'",
        flush=True,
    )
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    serve_bin = Path(sys.executable).parent / "serve"
    return subprocess.call([str(serve_bin), "run", str(config)], env=env, cwd=ROOT)


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
