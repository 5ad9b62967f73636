"""Chapter 09: data-parallel training (llm_course.train.distributed).

The central check launches 2 CPU processes with torchrun (gloo) and compares their per-step losses and
final weights with a 1-process run on the same global batch, which is itself compared with chapter 04's
``train`` loop (an independent implementation of the same update).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from llm_course.core.runtime import seed_everything
from llm_course.models.gpt import GPT
from llm_course.train.distributed import (
    TORCHRUN_ENV,
    DataParallelConfig,
    DistEnv,
    DistributedRunError,
    check_sharding,
    global_batch_at,
    launch,
    main,
    notes,
    pick_device_and_backend,
    read_dist_env,
    shard_batch,
    shard_range,
    synthetic_stream,
    train_data_parallel,
)
from llm_course.train.loop import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]

# A tiny run: 2-layer GPT, 64-token vocabulary, global batch 4 of 16 tokens, 5 updates of 2 micro-batches
# (so DDP's no_sync() path is exercised too).
TINY = dict(global_batch=4, block_size=16, n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_tokens=4000)
STEPS, ACCUM, SEED = 5, 2, 3
CLI_ARGS = ["--steps", str(STEPS), "--global-batch", "4", "--block-size", "16", "--n-layer", "2",
            "--n-embd", "32", "--n-head", "2", "--vocab-size", "64", "--tokens", "4000", "--grad-accum",
            str(ACCUM), "--warmup", "2", "--lr", "3e-3", "--seed", str(SEED), "--device", "cpu",
            "--log-interval", "0"]

# Tolerance for "the same losses": float32 losses near 4.2 carry rounding errors of ~5e-7 (ulp 4.8e-7);
# the 2-process run adds the per-rank means and the gradient all-reduce in another order, and 5 AdamW
# steps carry those differences along. Measured: max |difference| 5e-7 over 5 steps. 1e-5 leaves a 20x
# margin and is still ~1000x smaller than what a wrong sharding changes (test below: > 1e-2).
LOSS_TOL = 1e-5


def _train_cfg(**kw) -> TrainConfig:
    base = dict(max_steps=STEPS, lr=3e-3, min_lr=1e-4, warmup_steps=2, grad_accum_steps=ACCUM, seed=SEED,
                device="cpu", log_interval=0, progress=False, live_plot=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(world_size=st.integers(1, 8), per_rank=st.integers(1, 6))
def test_shards_partition_the_global_batch(world_size, per_rank):
    global_batch = world_size * per_rank
    slices = [shard_range(global_batch, r, world_size) for r in range(world_size)]
    rows = [i for s in slices for i in range(global_batch)[s]]
    assert rows == list(range(global_batch))  # every row once, in rank order
    assert all(s.stop - s.start == per_rank for s in slices)
    batch = {"input_ids": torch.arange(global_batch * 3).view(global_batch, 3)}
    batch["labels"] = batch["input_ids"] + 100
    parts = [shard_batch(batch, r, world_size) for r in range(world_size)]
    for key in batch:
        assert torch.equal(torch.cat([p[key] for p in parts]), batch[key])


def test_sharding_errors_are_clear():
    with pytest.raises(ValueError, match=r"world size \(4 processes\) is larger than the global batch \(2"):
        check_sharding(2, 4)
    with pytest.raises(ValueError, match=r"not divisible by the world size.*--global-batch 4 or 6"):
        check_sharding(5, 2)
    with pytest.raises(ValueError, match=r"world size \(3 processes\) is larger than the data \(2 sequences\)"):
        check_sharding(3, 3, n_sequences=2)
    with pytest.raises(ValueError, match=r"global batch \(8 sequences\) is larger than the data \(6"):
        check_sharding(8, 2, n_sequences=6)
    with pytest.raises(ValueError, match="rank must be an integer in"):
        shard_range(4, 2, 2)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        shard_range(4, 0, 0)
    assert check_sharding(8, 2, n_sequences=8) == 4


def test_global_batch_is_deterministic_and_rank_independent():
    tokens = synthetic_stream(1000, 32, branching=3, seed=0)
    a, b = global_batch_at(tokens, 7, 6, 10, seed=1), global_batch_at(tokens, 7, 6, 10, seed=1)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], a["input_ids"])
    assert not torch.equal(a["input_ids"], global_batch_at(tokens, 8, 6, 10, seed=1)["input_ids"])
    assert not torch.equal(a["input_ids"], global_batch_at(tokens, 7, 6, 10, seed=2)["input_ids"])
    # each row is a contiguous window of the stream
    for row in a["input_ids"]:
        starts = [s for s in range(len(tokens) - 9) if torch.equal(tokens[s:s + 10], row)]
        assert starts


def test_synthetic_stream_follows_its_chain():
    tokens = synthetic_stream(5000, 16, branching=3, seed=4)
    assert torch.equal(tokens, synthetic_stream(5000, 16, branching=3, seed=4))
    assert tokens.dtype == torch.long and int(tokens.min()) >= 0 and int(tokens.max()) < 16
    successors: dict[int, set[int]] = {}
    for a, b in zip(tokens[:-1].tolist(), tokens[1:].tolist()):
        successors.setdefault(a, set()).add(b)
    assert all(len(s) == 3 for s in successors.values())  # 5000 draws: every allowed successor shows up


# --------------------------------------------------------------------------------------------
# Environment, backend and CLI errors (all raised before any process group exists)
# --------------------------------------------------------------------------------------------


def test_read_dist_env(no_torchrun_env):
    assert read_dist_env() == DistEnv()
    with pytest.raises(ValueError, match="--distributed was given.*torchrun"):
        read_dist_env(force=True)
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    assert read_dist_env(environ=env) == DistEnv(rank=1, local_rank=1, world_size=2, distributed=True)
    with pytest.raises(ValueError, match="lacks MASTER_PORT"):
        read_dist_env(environ={k: v for k, v in env.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        read_dist_env(environ={**env, "RANK": "2"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_nccl_without_cuda_is_a_clear_error(no_torchrun_env, capsys):
    with pytest.raises(ValueError, match="NCCL backend needs CUDA GPUs.*--backend gloo"):
        pick_device_and_backend("auto", "nccl", DistEnv(0, 0, 2, True))
    assert main(CLI_ARGS + ["--backend", "nccl"]) == 2
    assert "NCCL backend needs CUDA" in capsys.readouterr().err


def test_cli_errors(no_torchrun_env, monkeypatch, capsys, tmp_path):
    out = tmp_path / "never.json"
    assert main(CLI_ARGS + ["--distributed", "--out", str(out)]) == 2
    assert "--distributed was given" in capsys.readouterr().err
    # rank 0 of a 4-process torchrun launch: the checks fail before init_process_group, so nothing waits
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(CLI_ARGS + ["--global-batch", "2", "--out", str(out)]) == 2  # world size > global batch
    assert "[rank 0] error: the world size (4 processes) is larger than the global batch" in capsys.readouterr().err
    assert main(CLI_ARGS + ["--global-batch", "6", "--out", str(out)]) == 2  # 6 % 4 != 0
    assert "not divisible by the world size (4" in capsys.readouterr().err
    assert main(CLI_ARGS + ["--tokens", "40", "--out", str(out)]) == 2  # 40 tokens = 2 blocks of 16 < 4 ranks
    assert "larger than the data (2 sequences)" in capsys.readouterr().err
    assert not out.exists() and not dist.is_initialized()


def test_notes_name_apis_that_exist():
    text = notes()
    assert "accelerate launch" in text and "fully_shard" in text and "torchrun" in text
    from torch.distributed.fsdp import (  # the names the notes use
        MixedPrecisionPolicy,
        fully_shard,
    )

    assert callable(fully_shard) and callable(MixedPrecisionPolicy)


# --------------------------------------------------------------------------------------------
# One process == chapter 04's loop; two processes == one process
# --------------------------------------------------------------------------------------------


def test_one_process_matches_the_chapter_04_loop(no_torchrun_env):
    cfg = DataParallelConfig(**TINY)
    ours = train_data_parallel(cfg, _train_cfg())
    assert ours["world_size"] == 1 and ours["backend"] is None and ours["per_rank_batch"] == 4

    tokens = synthetic_stream(cfg.n_tokens, cfg.vocab_size, cfg.branching, SEED)
    seed_everything(SEED)
    model = GPT(cfg.gpt_config(cfg.vocab_size))
    ref = train(model, lambda i: global_batch_at(tokens, i, cfg.global_batch, cfg.block_size, SEED), _train_cfg())
    assert len(ours["losses"]) == STEPS
    assert max(abs(a - b) for a, b in zip(ours["losses"], ref.losses)) < 1e-6
    assert max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(ours["steps"], ref.history)) < 1e-5
    assert ours["losses"][-1] < ours["losses"][0] - 0.05  # it learns


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="this torch build has no torch.distributed / gloo backend")
def test_two_processes_match_one(no_torchrun_env, tmp_path):
    # launch() raises DistributedRunError with every rank's stderr if the run fails or passes 120 s.
    stdout = launch(2, CLI_ARGS + ["--backend", "gloo", "--timeout-s", "60", "--out", str(tmp_path / "ddp2.json"),
                                   "--save-dir", str(tmp_path / "ddp2")], timeout_s=120, log_dir=tmp_path / "logs")
    assert stdout.startswith("2 process(es), gloo on cpu"), stdout
    two = json.loads((tmp_path / "ddp2.json").read_text())
    assert two["world_size"] == 2 and two["backend"] == "gloo" and two["per_rank_batch"] == 2

    cfg, train_cfg = DataParallelConfig(**TINY), _train_cfg()
    one = train_data_parallel(cfg, train_cfg, save_dir=tmp_path / "one")
    diff = max(abs(a - b) for a, b in zip(one["losses"], two["losses"]))
    assert len(two["losses"]) == STEPS and diff < LOSS_TOL, (one["losses"], two["losses"])
    assert max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(one["steps"], two["steps"])) < LOSS_TOL
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "ddp2" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5

    # The comparison can fail: one process on a rank's share of the batch (2 sequences) is another run.
    half = train_data_parallel(DataParallelConfig(**{**TINY, "global_batch": 2}), train_cfg)
    assert max(abs(a - b) for a, b in zip(half["losses"], two["losses"])) > 1e-2


# --------------------------------------------------------------------------------------------
# launch(): every rank's output kept, a clear error, nothing left running
# --------------------------------------------------------------------------------------------

# A stand-in for a training script, launched the same way: rank 1 writes a line and aborts (as a rank that
# dies in C++ does), the other ranks wait. Each rank records its pid so the test can check none survives.
PROBE = """
import os, sys, time
from pathlib import Path
rank, mode = int(os.environ.get("RANK", "0")), sys.argv[1]
Path(sys.argv[2], f"pid{rank}").write_text(str(os.getpid()))
if mode == "abort" and rank == 1:
    print("probe: rank 1 is about to abort", file=sys.stderr, flush=True)
    os.abort()
if mode == "port" and rank == 0:
    print("RuntimeError: The server socket has failed to listen on any local network address. "
          "port: 29500, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use",
          file=sys.stderr, flush=True)
    sys.exit(1)
print(f"probe: rank {rank} done", flush=True)
if mode in ("abort", "hang"):
    time.sleep(120)
"""


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # a zombie (exited, not yet reaped by its parent) is not running
    return not (status.exists() and "\tZ" in status.read_text().split("State:")[1][:4])


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(folder.glob("pid*"))]


def test_launch_names_the_rank_that_died_and_shows_its_own_output(probe):
    with pytest.raises(DistributedRunError) as info:
        launch(2, ["abort", str(probe)], module="ddp_probe", log_dir=probe / "logs", timeout_s=120)
    message = str(info.value)
    assert "rank 1 was killed by SIGABRT first" in message, message
    assert "--- rank 1 stderr" in message and "probe: rank 1 is about to abort" in message
    assert "rank 0" in message and "stopped by torchrun" in message  # the waiting rank was stopped, and says so
    assert info.value.returncode not in (0, None) and "about to abort" in info.value.rank_logs[1]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in _pids(probe)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_pids(probe)) == 2 and not any(_alive(pid) for pid in _pids(probe))


def test_launch_stops_every_process_past_its_time_limit(probe):
    t0 = time.monotonic()
    with pytest.raises(DistributedRunError, match="did not finish in time and was stopped"):
        launch(2, ["hang", str(probe)], module="ddp_probe", log_dir=probe / "logs", timeout_s=20)
    assert time.monotonic() - t0 < 60
    time.sleep(0.5)
    assert len(_pids(probe)) == 2 and not any(_alive(pid) for pid in _pids(probe))


def test_launch_recognises_a_taken_port(probe):
    with pytest.raises(DistributedRunError, match="a network port the run needs is taken"):
        launch(2, ["port", str(probe)], module="ddp_probe", log_dir=probe / "logs", timeout_s=120)


def test_launch_reports_the_scripts_own_error_first(no_torchrun_env, tmp_path):
    with pytest.raises(DistributedRunError) as info:
        launch(2, CLI_ARGS[:2] + ["--global-batch", "5"], log_dir=tmp_path, timeout_s=120)
    message = str(info.value)
    assert "The script said:" in message and "not divisible by the world size" in message
    assert message.index("The script said:") < message.index("--- rank 0 stderr")
    one = launch(1, CLI_ARGS + ["--out", str(tmp_path / "one.json")], timeout_s=120)
    assert one.startswith("1 process(es), no process group on cpu")


@pytest.mark.parametrize("kwargs, error", [
    (dict(nproc=0, args=[]), "nproc must be a positive integer"),
    (dict(nproc=2, args="--steps 3"), "list of command-line words"),
    (dict(nproc=2, args=[], timeout_s=0), "timeout_s must be a finite number > 0"),
    (dict(nproc=2, args=[], module="x; rm -rf /"), "dotted module name"),
])
def test_launch_bad_arguments(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        launch(**kwargs)


def test_torchrun_ranks_end_without_the_interpreters_teardown(no_torchrun_env, tmp_path, monkeypatch):
    """The fix for the flaky DDP run (see ``_exit_worker``): ranks end with os._exit after the barrier, so
    gloo's threads are never asked to take the GIL during Py_FinalizeEx. An atexit hook, installed in every
    Python process of the launch through sitecustomize, runs in torchrun itself but in no rank."""
    hooks = tmp_path / "site"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os\n"
        f"marker = os.path.join({str(tmp_path)!r}, 'atexit_' + os.environ.get('RANK', 'launcher'))\n"
        "atexit.register(lambda: open(marker, 'w').close())\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), str(REPO)]))
    launch(2, CLI_ARGS + ["--out", str(tmp_path / "ddp2.json")], log_dir=tmp_path / "logs", timeout_s=120)
    assert json.loads((tmp_path / "ddp2.json").read_text())["world_size"] == 2
    assert (tmp_path / "atexit_launcher").exists()  # the hook works ...
    assert not list(tmp_path.glob("atexit_[0-9]"))  # ... and no rank ran the interpreter's teardown
