"""benchmarks/compare_models.py end to end at a tiny size: generates the sets, trains and scores each model in
its own process, writes the Markdown table and the JSON results."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_models_small_run(tmp_path):
    work = tmp_path / "compare"
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "compare_models.py"), "--rows", "3000",
                           "--test_rows", "1000", "--models", "logistic_regression,dcn", "--work_dir", str(work),
                           "-o", "runner.train_batch_size=256"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CTRKIT_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    table = (work / "results.md").read_text()
    results = json.loads((work / "results.json").read_text())
    bayes_auc = results["test_set"]["summary"]["bayes_auc"]
    assert 0.5 < bayes_auc <= 1.0
    for name, bars in (("logistic_regression", "0.7886 (LR)"), ("dcn", "0.8138 (DCN)")):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"[\d,]+", cells[1]) and re.fullmatch(r"[\d,]+", cells[2]), row  # params, samples/s
        assert 0.0 < float(cells[3]) < 1.0 and float(cells[4]) > 0.0, row  # AUC, logloss
        assert cells[6] == bars, row
    assert f"| Bayes (true CTR) | | | {bayes_auc:.4f} |" in table
    assert [r["model"] for r in results["results"]] == ["logistic_regression", "dcn"]
    assert all(r["train_samples"] == 3000 and r["test_samples"] == 1000 for r in results["results"])
    assert not (work / "checkpoints" / "dcn").exists()  # removed unless --keep_checkpoints
