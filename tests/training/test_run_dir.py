"""Run folders of processes started together (torchrun, srun), and the safe resume load.

The world size is simulated through the environment: nothing here starts DDP.
"""

from __future__ import annotations

import pytest
import yaml

from segkit.cli import main
from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.training import resolve_run_dir
from segkit.training.fit import _safe_load

LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "SEGKIT_RUN_DIR",
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "SLURM_PROCID",
)


@pytest.fixture(params=["torchrun", "srun", "torchrun in a one-task SLURM job"])
def world_of_two(request, monkeypatch):
    """Two processes started together, as torchrun or SLURM's srun tell them (rank 0's view)."""
    for name in (*LAUNCHER_VARIABLES, "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if request.param != "srun":
        monkeypatch.setenv("WORLD_SIZE", "2")
    if request.param != "torchrun":  # srun sets no WORLD_SIZE; torchrun's count wins inside SLURM
        monkeypatch.setenv("SLURM_NTASKS", "2" if request.param == "srun" else "1")
        monkeypatch.setenv("SLURM_JOB_NAME", "train")
        monkeypatch.setenv("SLURM_PROCID", "0")


def test_ranks_share_the_named_folder_when_it_holds_no_run(tmp_path, world_of_two):
    config = load_config({"run": {"dir": str(tmp_path), "name": "big"}})
    assert resolve_run_dir(config) == tmp_path / "big"
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.yaml").write_text("{}")  # rank 0 may already have started
    assert resolve_run_dir(config) == tmp_path / "big"


@pytest.mark.parametrize("ckpt", ["last.ckpt", "best.ckpt"])
def test_ranks_refuse_a_folder_holding_an_earlier_run(tmp_path, world_of_two, ckpt):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / ckpt).write_bytes(b"x")
    config = load_config({"run": {"dir": str(tmp_path), "name": "big"}})
    with pytest.raises(ConfigError) as info:
        resolve_run_dir(config)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'big'}: holds {ckpt} from an earlier run")
    assert "run.name" in msg and "run.resume=last" in msg
    resuming = load_config({"run": {"dir": str(tmp_path), "name": "big", "resume": "last"}})
    assert resolve_run_dir(resuming) == tmp_path / "big"


def test_single_process_still_numbers(tmp_path, monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "last.ckpt").write_bytes(b"x")
    config = load_config({"run": {"dir": str(tmp_path), "name": "big"}})
    assert resolve_run_dir(config) == tmp_path / "big-2"


def test_cli_refuses_with_exit_2_before_any_work(tmp_path, world_of_two, capsys):
    runs = tmp_path / "runs"
    (runs / "big").mkdir(parents=True)
    (runs / "big" / "last.ckpt").write_bytes(b"x")
    cfg = tmp_path / "c.yaml"
    # the data folders do not exist: reaching the data check would exit 1 instead
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"train": {"images": "nope/images", "masks": "nope/masks"}},
                "model": {"encoder": "resnet18", "encoder_weights": None},
                "run": {"dir": str(runs), "name": "big"},
            }
        )
    )
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {runs / 'big'}: holds last.ckpt") and err.count("\n") == 1
    assert sorted(p.name for p in (runs / "big").iterdir()) == ["last.ckpt"]


def test_resume_load_is_weights_only():
    import lightning as L
    from packaging.version import Version

    # Lightning 2.6 added Trainer.fit(weights_only=...); older versions cannot be told
    expected = {"weights_only": True} if Version(L.__version__) >= Version("2.6") else {}
    assert _safe_load() == expected


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_zero_writes_the_run_folder_and_the_others_take_it(tmp_path, monkeypatch, rank):
    """Rank-zero decisions before a Trainer exists are Lightning's (``rank_zero_only.rank``, read
    from its launcher's, torchrun's or srun's variables): rank 0 starts the folder and hands it
    on; the processes launched after it take that folder instead of numbering their own."""
    from lightning.pytorch.utilities import rank_zero_only

    from segkit.training.run_dir import _RUN_DIR_ENV, start_run_dir

    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.setenv(_RUN_DIR_ENV, str(tmp_path / "handed"))
    config = load_config({"run": {"dir": str(tmp_path), "name": "big"}})
    folder = resolve_run_dir(config)
    assert folder == (tmp_path / "big" if rank == 0 else tmp_path / "handed")
    start_run_dir(config, folder, resuming=False)
    assert (folder / "config.yaml").is_file() is (rank == 0)
    if rank == 0:
        import os

        assert os.environ[_RUN_DIR_ENV] == str(folder)
