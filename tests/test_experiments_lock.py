"""One writer per run directory: a second process is refused naming the holder's PID, and
a lock left by a killed process does not block the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from l2bn.cli import main
from l2bn.experiments.runs import is_done
from test_experiments_datasets import tiny_config, write_idx

HOLD = (
    "import sys\n"
    "from l2bn.experiments.run_lock import run_lock\n"
    "with run_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"
)


def test_second_writer_is_refused_and_a_dead_holder_does_not_block(tmp_path: Path, capsys) -> None:
    root = write_idx(tmp_path / "data", n_train=16, n_test=8)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config(data_root=str(root), epochs=1).to_yaml())
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--run-dir", str(run), "--quiet"]

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("l2bn train: error:") and f"in use by process {holder.pid}" in err
        assert sorted(os.listdir(run)) == ["lock", "lock.owner"]  # the refused one wrote nothing
    finally:
        holder.kill()  # SIGKILL: no clean-up in the holder
        holder.wait()
    assert main(args) == 0
    assert is_done(run)
