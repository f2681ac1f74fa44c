"""benchmarks.sampler_quality: the sampler list, the evaluation count and its bad-input lines
(exit status 2, nothing written); an end-to-end run on a briefly trained digits model."""

from __future__ import annotations

import json

import pytest

from benchmarks import sampler_quality as bench


def test_default_list_is_the_issues():
    assert bench.DEFAULT_SAMPLERS == (("ddpm", 1000), ("ddpm", 250), ("ddpm", 100), ("ddim", 100),
                                      ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpm_solver++", 20),
                                      ("dpm_solver++", 10))


def test_parse_samplers():
    assert bench.parse_samplers("ddpm:1000, ddim:5,dpm_solver++:2") == (("ddpm", 1000), ("ddim", 5),
                                                                       ("dpm_solver++", 2))
    for bad in ("ddim", "ddim:0", "ddim:x", "euler:10", "ddim:-3"):
        with pytest.raises(ValueError, match="--samplers"):
            bench.parse_samplers(bad)


def test_evaluations_double_with_guidance():
    assert bench.evaluations_per_sample(50, 1.0) == 50
    assert bench.evaluations_per_sample(50, 3.0) == 100
    assert bench.evaluations_per_sample(50, 0.0) == 100  # w = 0: the unconditional half alone, still batched


@pytest.mark.parametrize("args, message", [
    (["--model", "cifar=x"], "--model must be DATA=PATH"),
    (["--model", "digits"], "--model must be DATA=PATH"),
    (["--model", "digits=/no/such/run"], "no such checkpoint"),
    (["--model", "digits={run}"], "no checkpoint under"),
    (["--model", "digits={run}", "--n", "1"], "--n must be >= 2"),
    (["--model", "digits={run}", "--samplers", "ddim:0"], "--samplers"),
    (["--model", "digits={run}", "--guidance", "-1"], "--guidance"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "out" / "table"
    args = [a.format(run=run) for a in args] + ["--out", str(out)]
    assert bench.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.parent.exists()


def _report(command, rows, checkpoint="run/checkpoints/step_1"):
    return {"command": command, "machine": "m", "commit": "c", "load_start": [1.0, 1.0, 1.0],
            "load_end": [2.0, 2.0, 2.0], "n": 100, "guidance": 1.0, "seed": 0,
            "models": {"digits": {"checkpoint": checkpoint, "step": 1, "rows": rows}}}


def _row(sampler, steps, fd):
    return {"sampler": sampler, "steps": steps, "evaluations": steps, "wall_s": 1.0, "fd": fd,
            "fd_floor": 1.0, "precision": 0.5, "recall": 0.5, "hit_rate": 0.9}


def test_combine_writes_one_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_report("A", [_row("ddim", 10, 3.0), _row("ddim", 50, 2.0)])))
    b.write_text(json.dumps(_report("B", [_row("ddpm", 250, 1.5)])))
    assert bench.main(["--combine", str(a), str(b), "--out", str(tmp_path / "t")]) == 0
    merged = json.loads((tmp_path / "t.json").read_text())
    assert [r["steps"] for r in merged["models"]["digits"]["rows"]] == [10, 50, 250]
    assert merged["command"] == "A ; B"
    table = (tmp_path / "t.md").read_text()
    assert "| ddpm | 250 | 250 | 1.500 | 1.000 |" in table
    assert (tmp_path / "t.png").stat().st_size > 1000
    b.write_text(json.dumps(_report("B", [_row("ddpm", 250, 1.5)], checkpoint="other")))
    with pytest.raises(ValueError, match="two checkpoints or sample counts"):
        bench.main(["--combine", str(a), str(b), "--out", str(tmp_path / "u")])
    assert bench.main(["--combine", str(a)]) == 2
