"""The benchmark scripts still run: a seconds-long engine sweep, the search A/B and the
GPU script's CPU smoke mode, all on the tiny model. Speeds are not checked, only the
shape of the results (and, in the A/B, that both searches agree)."""

from __future__ import annotations

import json

from bench import engine_sweep, gpu_bench, realtime_turns, search_ab


def test_engine_sweep_runs(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep.json"
    argv = ["--model", str(tiny_model_dir), "--batch-sizes", "1", "2", "--budget-s", "1"]
    argv += ["--clip-seconds", "1", "1.5", "--rounds", "1", "--profile-batch", "2"]
    argv += ["--mix-clips", "20", "--modes", "ctc_greedy_search", "--json", str(out)]
    assert engine_sweep.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["sweep"]["samples"]["ctc_greedy_search"]["1"]
    pad = {r["batch_size"]: r for r in result["padding"]["rows"]}
    assert pad[1]["sorted_efficiency"] == 1.0
    assert pad[2]["sorted_efficiency"] >= pad[2]["arrival_efficiency"] - 1e-9
    stages = result["profile"]["ctc_greedy_search"]["stages_s"]
    assert stages["encoder"] > 0 and stages["features"] > 0


def test_arrival_packer_respects_budget():
    batches = engine_sweep.pack_in_order([100, 2000, 50, 60], max_padded=2100, forward_cost=10)
    assert [x for b in batches for x in b] == [100, 2000, 50, 60]
    assert all(len(b) == 1 or len(b) * max(b) <= 2100 for b in batches)


def test_gpu_bench_smoke(tiny_model_dir, tmp_path):
    argv = ["--smoke", "--model", str(tiny_model_dir), "--out", str(tmp_path)]
    argv += ["--mode", "ctc_greedy_search"]
    assert gpu_bench.main(argv) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert {c["precision"] for c in result["cells"]} == {"fp32", "bf16"}
    assert all(c["errors"] == 0 and c["rtfx"] > 0 for c in result["cells"])
    assert "| ctc_greedy_search |" in (tmp_path / "gpu_bench.md").read_text()


def test_search_ab_runs_and_both_searches_agree(tiny_model_dir, tmp_path):
    out = tmp_path / "ab.md"
    argv = ["--model", str(tiny_model_dir), "--batch-sizes", "3", "--rounds", "1"]
    argv += ["--clip-seconds", "2", "--beam-size", "4", "--md", str(out)]
    assert search_ab.main(argv) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ctc_")]
    rows += [line for line in out.read_text().splitlines() if line.startswith("| attention_")]
    assert len(rows) == 2
    assert all(line.rstrip(" |").endswith("3/3") for line in rows)


def test_realtime_turns_scores_live_finals_against_whole_clips(tmp_path):
    """One session of six word-joined held-out clips through the live session and the
    step loop, without Ray: every turn gets a final, and on clips with clear pauses the
    turns' finals score as the whole clips do (the demo model's own figure)."""
    out = tmp_path / "turns.json"
    argv = ["--model", "models/demo-live", "--data", "tests/data/demo", "--kind", "heldout"]
    argv += ["--clips", "6", "--prefix-padding-ms", "300", "--json", str(out)]
    realtime_turns.main(argv)
    (row,) = json.loads(out.read_text())
    assert row["prefix_padding_ms"] == 300
    assert row["final_wer"] == row["whole_wer"] < 10
