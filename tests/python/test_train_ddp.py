"""Data-parallel training (python/sagan_attn/distributed.py through train.py) under torchrun: 2 CPU
processes on gloo, against one process on the same global batch.

What one process must reproduce is DDP without --sync-bn (torch's SyncBatchNorm runs on CUDA only): each
rank normalises G's activations over its own half of the batch. The reference run is therefore one
process whose batch norms normalise each half of the batch on its own ("ghost" batch norm); everything
else (latents, labels, interpolation weights, data order, spectral-norm power iterations, losses) is the
same by construction. What differs by design: G's batch-norm running statistics (rank 0's half only
under DDP, both halves in turn in the reference; they never enter training, only G_ema's samples).

Start-up dominates on a small machine (three processes import torch), so one torchrun job
(train_ddp_runner.py) does the gradient check, a 4-step run with FID on rank 0, and a 2+2-step resumed
run; a second job checks that a failing rank stops the job.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sagan_attn
from sagan_attn import distributed, train
from sagan_attn.models import ConditionalBatchNorm2d

from train_ddp_runner import TinyFeatures, first_gradients

HERE = Path(__file__).resolve().parent
ARGS = ["--ch", "8", "--batch-size", "8", "--z-dim", "16", "--samples", "20", "--no-progress", "--log-every", "1",
        "--threads", "1", "--sample-every", "0", "--loss", "wgan-gp"]
BUFFERS_BY_DESIGN = ("running_mean", "running_var", "num_batches_tracked")  # G's BN statistics, see above


@pytest.fixture(autouse=True)
def _restore_threads(restore_threads):
    """--threads sets torch's thread count for the process; give the other tests theirs back."""


def _torchrun(*argv: str, env_extra=None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    package_root = str(Path(sagan_attn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, str(HERE), env.get("PYTHONPATH")) if p)
    # --standalone: a rendezvous on a free local port, so parallel test runs do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


class GhostBatchNormTrainer(train.Trainer):
    """One process whose G batch norms normalise each half of the batch separately: DDP's arithmetic on 2
    ranks without --sync-bn. G runs once per call, so its spectral-norm power iterations match too."""

    def __init__(self, args, *extra, **kwargs) -> None:
        super().__init__(args, *extra, **kwargs)
        for module in self.G.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                plain = module.forward
                module.forward = lambda x, plain=plain: torch.cat([plain(half) for half in x.chunk(2)])


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith(BUFFERS_BY_DESIGN)}


def _flat(state: dict, keys) -> torch.Tensor:
    return torch.cat([state[k].double().flatten() for k in keys])


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(str(HERE / "train_ddp_runner.py"), str(out), *ARGS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_gradients_match_one_process(ddp_job, tmp_path):
    """The all-reduced gradients of a D step (WGAN-GP: double backward through DDP) and a G step are the
    one-process gradients of the global batch. Adam would hide a sum-instead-of-mean (it is invariant to
    the gradient's scale), so gradients are checked before the optimizer.

    Tolerance: float32 sums over the batch in another order (per rank, then all-reduce); measured worst
    3e-5 relative to the network's gradient norm, 5e-4 allowed; a missing or doubled term is O(1). Each
    tensor is compared against its own norm, floored at 1e-3 of the network's: a conv bias followed by
    batch norm has a gradient of exactly 0 in exact arithmetic, float noise in practice."""
    out, _ = ddp_job
    ddp = torch.load(out / "grads.pt", weights_only=True)
    one = first_gradients([*ARGS, "--out", str(tmp_path)], GhostBatchNormTrainer)
    for net in ("D", "G"):
        assert ddp[net].keys() == one[net].keys()
        total = torch.cat([g.flatten() for g in one[net].values()]).norm()
        for name, grad in one[net].items():
            err = (ddp[net][name] - grad).norm() / torch.maximum(grad.norm(), 1e-3 * total)
            assert err < 5e-4, f"{net}.{name}: gradient differs by {err:.2e} (relative)"


def test_parameters_match_one_process(ddp_job, tmp_path):
    """4 steps on 2 ranks give one process's G and D (ghost batch norm, see the module docstring).

    Adam's first steps move each weight by about lr whatever the gradient's size, so an element whose
    gradient is near 0 can move either way on float noise: compared is the distance between the two runs
    relative to how far the weights moved (measured 0.1-0.2%, allowed 5%; a wrong shard or label, or a rank
    training on its own gradients, gives O(1))."""
    out, _ = ddp_job
    args = train.parse_args([*ARGS, "--steps", "4", "--out", str(tmp_path)])
    reference = GhostBatchNormTrainer(args)
    initial = {"G": {k: v.clone() for k, v in reference.G.state_dict().items()},
               "D": {k: v.clone() for k, v in reference.D.state_dict().items()}}
    reference.train()
    one = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    ddp = torch.load(out / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert ddp["step"] == one["step"] == 4
    for net in ("G", "D"):
        keys = sorted(_params(one[net]))
        assert sorted(_params(ddp[net])) == keys  # no "module." prefix: checkpoints are interchangeable
        a, b, start = _flat(ddp[net], keys), _flat(one[net], keys), _flat(initial[net], keys)
        moved = (b - start).norm()
        assert moved > 0
        assert (a - b).norm() / moved < 0.05, f"{net}: {((a - b).norm() / moved).item():.3f} of the update differs"
    # the logged losses are the global batch's (the mean over ranks), as one process logs them
    logged = [json.loads(line) for line in (out / "straight" / "log.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([logged[0][k] for k in ("d_loss", "gp", "d_real", "d_fake")]),
                               torch.tensor([expected[0][k] for k in ("d_loss", "gp", "d_real", "d_fake")]),
                               rtol=1e-4, atol=1e-5)


def test_outputs_on_rank_zero_with_fid(ddp_job):
    out, proc = ddp_job
    assert proc.stdout.count("done: step 4") == 2  # the report is printed once per run, by rank 0
    summary = json.loads((out / "straight" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["dist_backend"] == "gloo" and summary["sync_bn"] is False
    assert summary["images_per_s_per_process"] == pytest.approx(summary["images_per_s"] / 2)
    fids = [r for r in map(json.loads, (out / "straight" / "log.jsonl").read_text().splitlines()) if "fid" in r]
    assert [r["step"] for r in fids] == [2, 4] and all(r["fid"] >= 0 for r in fids)
    assert (out / "straight" / "fid.png").is_file() and summary["fid"] == fids[-1]["fid"]
    ckpt = torch.load(out / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt) >= {"G", "D", "G_ema", "opt_G", "opt_D", "rng"}


def test_resume_under_two_processes(ddp_job):
    """2 steps, save, resume to 4 on 2 ranks == 4 steps at once on 2 ranks, bit for bit (the straight run's
    FIDs on rank 0 also show that an evaluation changes nothing in the run)."""
    out, _ = ddp_job
    straight = torch.load(out / "straight" / "checkpoints" / "last.pt", weights_only=True)
    split = torch.load(out / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert split["step"] == 4
    for key in ("G", "D", "G_ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, split[key][name]), f"{key}.{name}"
    for key in ("opt_G", "opt_D"):
        for index, state in straight[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, split[key]["state"][index][name]), f"{key}[{index}].{name}"
    assert torch.equal(straight["rng"]["torch"], split["rng"]["torch"])


def test_ddp_checkpoint_resumes_in_one_process(ddp_job, tmp_path):
    out, _ = ddp_job
    assert train.main([*ARGS, "--steps", "5", "--out", str(tmp_path),
                       "--resume", str(out / "split" / "checkpoints" / "last.pt")]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps_this_run"] == 1


def test_a_failing_rank_stops_the_job(tmp_path):
    """Rank 1 raises at step 2 while rank 0 waits in an all-reduce: torchrun stops rank 0 and reports
    rank 1's error (our message names the rank and step) instead of hanging."""
    proc = _torchrun("-m", "sagan_attn.train", *ARGS, "--steps", "3", "--out", str(tmp_path),
                     env_extra={distributed.FAULT_ENV: "1:2"}, timeout=180)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "rank 1 of 2 failed at step 2" in text and f"fault injected by {distributed.FAULT_ENV}" in text, text[-4000:]


# -- in one process ------------------------------------------------------------------------------------------


def test_sync_bn_converts_conditional_batch_norm(tmp_path):
    """--sync-bn turns every BN of G (those inside conditional BN too) into SyncBatchNorm; alone (no process
    group) it computes plain batch norm, and its checkpoint loads into a model without it."""
    args = train.parse_args([*ARGS, "--steps", "1", "--out", str(tmp_path), "--sync-bn"])
    trainer = train.Trainer(args)
    norms = [m for m in trainer.G.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert all(isinstance(m.bn, torch.nn.SyncBatchNorm) for m in trainer.G.modules()
               if isinstance(m, ConditionalBatchNorm2d))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.G_ema.modules())
    trainer.train()
    without = train.Trainer(train.parse_args([*ARGS, "--out", str(tmp_path / "plain")]))
    without.G.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["G"])  # strict


def test_sync_bn_on_cpu_processes_is_refused():
    ctx = distributed.DistContext(rank=0, world_size=2, backend="gloo")
    with pytest.raises(SystemExit, match="--sync-bn needs CUDA devices"):
        distributed.convert_sync_bn(torch.nn.BatchNorm2d(4), torch.device("cpu"), ctx)


def test_global_batch_is_split_over_ranks():
    ctx = distributed.DistContext(rank=1, world_size=4)
    assert ctx.shard(8) == slice(2, 4)
    batches = [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]]
    assert list(distributed.ShardedBatchSampler(batches, ctx)) == [[2, 3], [10, 11]]
    with pytest.raises(SystemExit, match="multiple of the 4 processes, got 6"):
        distributed.check_batch(ctx, 6)
