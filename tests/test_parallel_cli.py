"""``torchrun --nproc-per-node 2 -m magihuman generate`` (gloo on the CPU) writes the MP4 one process writes, and
``--gpus N`` re-launches the same command under torch.distributed.run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magihuman import cli

ROOT = Path(__file__).resolve().parents[1]
# bf16 compute named (not "auto", which a loaded CPU may measure either way): fp32 results of a random tiny model
# drift with the token split beyond one 8-bit level over 8 re-noised steps, bf16 rounding does not
ARGS = ["generate", "--preset", "tiny", "--prompt", "A man smiles and says hello.", "--seconds", "1", "--seed", "7",
        "--compute-dtype", "bf16"]


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])


def test_torchrun_two_ranks_write_the_one_process_mp4(tiny_dir, tmp_path, capsys):
    one = tmp_path / "one.mp4"
    assert cli.main(ARGS + ["--models", str(tiny_dir), "--output", str(one), "--quiet"]) == 0
    capsys.readouterr()

    two = tmp_path / "two.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "magihuman",
           *ARGS, "--models", str(tiny_dir), "--output", str(two), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sequence parallel: 2 ranks (gloo, cpu)" in proc.stderr
    assert proc.stderr.count("wrote ") == 1  # rank 0 alone writes
    a, b = _frames(one), _frames(two)
    assert a.shape == b.shape == (25, 64, 128, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # measured: identical files
    print("identical MP4 bytes:", one.read_bytes() == two.read_bytes())


def test_gpus_relaunches_itself_under_torch_distributed_run(tiny_dir, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(cmd, env=None, **kw):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = str(tmp_path / "o.mp4")
    argv = ARGS + ["--models", str(tiny_dir), "--gpus", "2", "--output", out]
    assert cli.main(argv) == 3  # the launcher's exit code
    cmd, env = calls[0]
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert cmd[6:] == ["magihuman", *ARGS, "--models", str(tiny_dir), "--output", out]  # --gpus dropped
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)


@pytest.mark.parametrize("gpus, message", [
    ("3", "error: --gpus 3: sequence parallel over 3 ranks is not possible for this DiT: its 4 query heads and 2 "
          "key/value heads"),
    ("0", "error: --gpus must be >= 1"),
])
def test_gpus_the_heads_cannot_split_are_refused(tiny_dir, tmp_path, capsys, gpus, message):
    code = cli.main(ARGS + ["--models", str(tiny_dir), "--gpus", gpus, "--output", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
