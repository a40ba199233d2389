"""Tests of the training script (python/sagan_attn/train.py), its data (data.py) and figures (figures.py).

Every run is tiny (ch 8, batch 4, 32x32 digits, a few steps) and runs in this process through
``train.main``; one test runs the ``python -m sagan_attn.train`` entry point in a subprocess.
"""
from __future__ import annotations

import itertools
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sagan_attn
from sagan_attn import figures, fid, reference, train
from sagan_attn.data import ImageFolderDataset, StepBatchSampler, digits
from sagan_attn.models import Generator

from train_ddp_runner import TinyFeatures

REPO = Path(__file__).resolve().parents[2]
# One thread: the models are tiny, and a single thread is as fast and immune to a busy machine's spinning.
TINY = ["--ch", "8", "--batch-size", "4", "--z-dim", "16", "--samples", "20", "--no-progress", "--log-every", "1",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads(restore_threads):
    """--threads sets torch's thread count for the process; give the other tests theirs back."""


def _train(out: Path, *extra: str) -> dict:
    assert train.main([*TINY, "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _log(out: Path) -> list:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


# -- a few steps of every configuration ------------------------------------------------------------------


@pytest.mark.parametrize("loss, variant, attention",
                         list(itertools.product(["hinge", "nonsaturating", "wgan-gp"], ["paper", "official"],
                                                ["fused", "notebook"])))
def test_smoke(tmp_path, loss, variant, attention):
    summary = _train(tmp_path, "--steps", "2", "--sample-every", "0", "--loss", loss, "--attn-variant", variant,
                     "--attention", attention)
    assert summary["steps"] == 2 and summary["attention_impl"] == attention and summary["loss"] == loss
    records = _log(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("d_loss", "g_loss")), r
        assert ("gp" in r) == (loss == "wgan-gp")
    ckpt = _checkpoint(tmp_path)
    assert ckpt["step"] == 2 and ckpt["args"]["attention"] == attention
    assert set(ckpt) >= {"G", "D", "G_ema", "opt_G", "opt_D", "rng", "args"}


@pytest.mark.parametrize("attention", ["fused", "notebook"])
def test_r1_lazy_every_k_steps(tmp_path, attention):
    """--r1 GAMMA --r1-every 2: the penalty (through the fused double backward, or the notebook's bmm)
    on the 1st and 3rd discriminator steps only, logged beside the losses."""
    _train(tmp_path, "--steps", "3", "--sample-every", "0", "--r1", "1.0", "--r1-every", "2",
           "--attention", attention)
    records = _log(tmp_path)
    assert ["r1" in r for r in records] == [True, False, True]
    assert all(r["r1"] > 0 and torch.isfinite(torch.tensor(r["r1"])) for r in records if "r1" in r)


def test_several_discriminator_steps(tmp_path):
    summary = _train(tmp_path, "--steps", "2", "--sample-every", "0", "--n-dis", "2", "--unlabelled")
    assert summary["steps"] == 2
    assert _checkpoint(tmp_path)["opt_D"]["state"][0]["step"].item() == 4  # two D updates per step
    assert _checkpoint(tmp_path)["opt_G"]["state"][0]["step"].item() == 2


def test_figures_summary_and_report(tmp_path, capsys):
    summary = _train(tmp_path, "--steps", "2", "--sample-every", "1")
    out = capsys.readouterr().out
    assert "images/s" in out and "peak memory" in out
    assert summary["images_per_s"] > 0 and summary["peak_memory_mib"] > 0
    assert summary["g_attn_res"] == [32] and summary["d_attn_res"] == [16]
    for step in range(3):  # before the first step, then after each
        grid = Image.open(tmp_path / "samples" / f"step_{step:06d}.png")
        # 20 samples, a column per digit class: 2 rows of 10 cells of 32 px, 2 px padding
        assert grid.size == (2 + 10 * 34, 2 + 2 * 34)
        attention = Image.open(tmp_path / "attention" / f"step_{step:06d}.png")
        # 4 images, each with 4 query positions: 4 rows of 1 + 4 cells of 128 px
        assert attention.size == (2 + 5 * 130, 2 + 4 * 130)
    assert summary["samples_png"].endswith("step_000002.png")


def test_attention_figure_uses_rows_only(monkeypatch):
    """The visualisation asks the attention for the rows of its query positions, never the full map."""
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=16, num_classes=10).eval()
    shapes = []
    real_map = reference.attention_map

    def spy(f, g, scale=1.0):
        shapes.append((f.shape[2], g.shape[2]))
        return real_map(f, g, scale)

    monkeypatch.setattr(reference, "attention_map", spy)
    images, rows, queries, grid = figures.generate_with_attention(G, torch.randn(3, 16), torch.tensor([1, 2, 3]))
    assert images.shape == (3, 3, 32, 32) and grid == (32, 32) and len(queries) == 4
    assert rows.shape == (3, 4, 32, 32)
    torch.testing.assert_close(rows.sum(dim=(2, 3)), torch.ones(3, 4))
    assert shapes == [(4, 32 * 32)]  # 4 query rows of 1024 keys, not 1024 x 1024


# -- checkpoints and resume --------------------------------------------------------------------------------


def _assert_same_state(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("loss, attention, variant", [("hinge", "fused", "paper"), ("wgan-gp", "notebook", "official")])
def test_resume_gives_the_uninterrupted_run(tmp_path, loss, attention, variant):
    """2 steps, save, resume to 4 steps == 4 steps at once: bit for bit (CPU, deterministic kernels)."""
    common = ["--loss", loss, "--attention", attention, "--attn-variant", variant, "--sample-every", "0"]
    _train(tmp_path / "straight", "--steps", "4", *common)
    _train(tmp_path / "split", "--steps", "2", *common)
    checkpoint = tmp_path / "split" / "checkpoints" / "last.pt"
    summary = _train(tmp_path / "split", "--steps", "4", "--resume", str(checkpoint))
    assert summary["steps"] == 4 and summary["steps_this_run"] == 2
    straight, split = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "split")
    assert split["step"] == 4 and split["args"]["loss"] == loss  # the arguments came from the checkpoint
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "rng"):
        _assert_same_state(straight[key], split[key], key)
    assert [r["step"] for r in _log(tmp_path / "split")] == [1, 2, 3, 4]


def test_checkpoint_moves_between_attention_implementations(tmp_path):
    _train(tmp_path, "--steps", "2", "--sample-every", "0", "--attention", "fused")
    ckpt = tmp_path / "checkpoints" / "last.pt"
    summary = _train(tmp_path, "--steps", "3", "--sample-every", "0", "--attention", "notebook", "--resume", str(ckpt))
    assert summary["steps"] == 3 and summary["attention_impl"] == "notebook"
    summary = _train(tmp_path, "--steps", "4", "--sample-every", "0", "--attention", "fused", "--resume", str(ckpt))
    assert summary["steps"] == 4 and summary["attention_impl"] == "fused"


def test_resume_rejects_a_model_that_does_not_fit(tmp_path):
    _train(tmp_path, "--steps", "1", "--sample-every", "0")
    with pytest.raises(SystemExit, match="does not fit the model"):
        _train(tmp_path, "--steps", "2", "--ch", "16", "--resume", str(tmp_path / "checkpoints" / "last.pt"))


# -- AMP ---------------------------------------------------------------------------------------------------


def test_amp_bf16_on_cpu(tmp_path):
    """bf16 autocast on the CPU: the attention blocks (fused op) run in bfloat16, the losses stay finite."""
    args = train.parse_args([*TINY, "--out", str(tmp_path), "--amp", "bf16"])
    trainer = train.Trainer(args)
    dtypes = []
    trainer.G.attention["32"].register_forward_pre_hook(lambda module, inputs: dtypes.append(inputs[0].dtype))
    with torch.no_grad(), trainer.autocast():
        trainer.G(torch.randn(2, 16), torch.tensor([0, 1]))
    assert dtypes == [torch.bfloat16]
    summary = _train(tmp_path, "--steps", "2", "--sample-every", "0", "--amp", "bf16", "--loss", "wgan-gp")
    assert summary["amp"] == "bf16"
    assert all(torch.isfinite(torch.tensor([r["d_loss"], r["g_loss"], r["gp"]])).all() for r in _log(tmp_path))


# -- FID -------------------------------------------------------------------------------------------------

FID_ARGS = ["--fid-every", "2", "--fid-samples", "16", "--fid-batch-size", "8"]


def test_fid_is_logged_plotted_and_changes_nothing(tmp_path):
    """FID (and IS) through the stand-in extractors: logged beside the losses at steps 2 and 4, plotted in
    fid.png; the run's weights and RNG are bit for bit those of the same run without evaluation."""
    assert train.main([*TINY, "--out", str(tmp_path / "fid"), "--steps", "4", "--sample-every", "0", *FID_ARGS,
                       "--log-every", "3"], fid_feature_extractor=TinyFeatures(),
                      is_feature_extractor=TinyFeatures(seed=7)) == 0
    records = _log(tmp_path / "fid")
    assert [r["step"] for r in records] == [2, 3, 4]
    assert "fid" not in records[1] and "d_loss" not in records[0] and "d_loss" in records[2]
    for r in (records[0], records[2]):
        assert r["fid"] >= 0 and r["is_mean"] >= 1.0 and r["is_std"] >= 0  # IS is at least 1 by definition
    summary = json.loads((tmp_path / "fid" / "summary.json").read_text())
    assert summary["fid"] == records[2]["fid"] and Image.open(summary["fid_png"]).size == (640, 400)
    _train(tmp_path / "plain", "--steps", "4", "--sample-every", "0", "--log-every", "3")
    with_fid, plain = _checkpoint(tmp_path / "fid"), _checkpoint(tmp_path / "plain")
    for key in ("G", "D", "G_ema", "rng"):
        _assert_same_state(with_fid[key], plain[key], key)


def test_fid_matches_a_direct_computation():
    """The evaluator's FID (torchmetrics) equals the Frechet distance computed here with scipy's sqrtm on
    the same features: the real subset, the generator's images in uint8, both sets of statistics."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    data = digits(32)
    extractor = TinyFeatures()
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=16, num_classes=10).eval()
    state = torch.get_rng_state()
    evaluator = fid.FidEvaluator(extractor, data, num_samples=40, batch_size=40, device=torch.device("cpu"),
                                 z_dim=16, num_classes=10, seed=3)
    value = evaluator(G)["fid"]
    assert evaluator(G)["fid"] == pytest.approx(value, rel=1e-9)  # real statistics kept, fake ones reset
    assert torch.equal(torch.get_rng_state(), state)  # the run's generator is left alone

    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))[:40]
    real = torch.stack([data[int(k)][0] for k in order])
    z = torch.randn(40, 16, generator=torch.Generator().manual_seed(3 + 2))
    with torch.no_grad():
        fake = G(z, torch.arange(40) % 10)
        feats = [extractor(fid.to_uint8_rgb(x)).double().numpy() for x in (real, fake)]
    (mu1, mu2), (s1, s2) = [f.mean(0) for f in feats], [np.cov(f, rowvar=False) for f in feats]
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    # torchmetrics sums the square roots of the eigenvalues of s1 s2 (float64 states, float32 result)
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-6) and expected > 0


def test_fid_needs_local_weights(tmp_path):
    with pytest.raises(SystemExit, match="--fid-every needs --fid-weights"):
        _train(tmp_path, "--steps", "1", "--fid-every", "1")
    with pytest.raises(SystemExit, match="no such file"):
        _train(tmp_path, "--steps", "1", "--fid-every", "1", "--fid-weights", str(tmp_path / "missing.pth"))
    (tmp_path / "empty.pth").write_bytes(b"")
    # an empty file: torch-fidelity missing (a clear install hint) or the file is not the Inception's weights
    with pytest.raises(SystemExit, match="torch-fidelity|not the FID Inception-v3 weights"):
        _train(tmp_path, "--steps", "1", "--fid-every", "1", "--fid-weights", str(tmp_path / "empty.pth"))


# -- data --------------------------------------------------------------------------------------------------


def test_digits_dataset():
    data = digits(32)
    assert len(data) == 1797 and data.num_classes == 10 and data.img_channels == 1
    x, y = data[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y.item() == 0
    assert data.images.min() == -1.0 and data.images.max() == 1.0
    unlabelled = digits(32, labelled=False)
    assert unlabelled.num_classes == 0 and int(unlabelled.labels.abs().sum()) == 0
    assert data.num_classes == 10 and data.labels.max() == 9  # the cached tensors were not touched


def test_step_batch_sampler():
    full = list(StepBatchSampler(10, 3, seed=5, start_step=0, stop_step=9))
    assert len(full) == 9
    for epoch in range(3):  # 3 batches per epoch (the 10th item dropped), no repeat within an epoch
        items = sum(full[3 * epoch:3 * epoch + 3], [])
        assert len(set(items)) == 9
    assert list(StepBatchSampler(10, 3, seed=5, start_step=4, stop_step=9)) == full[4:]
    assert list(StepBatchSampler(10, 3, seed=6, stop_step=9)) != full
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(2, 3)


def _write_images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    modes = ["RGB", "L", "RGBA"]
    for k in range(count):  # sizes that are neither square nor 32, grey and RGBA among them
        width, height = 40 + 7 * k, 33 + 5 * k
        pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy()
        mode = modes[k % 3]
        suffix = "png" if mode == "RGBA" or k % 2 else "jpg"
        Image.fromarray(pixels).convert(mode).save(folder / f"img{k}.{suffix}")


def test_image_folder_with_classes(tmp_path):
    _write_images(tmp_path / "data" / "cats", 4, 0)
    _write_images(tmp_path / "data" / "dogs", 4, 1)
    data = ImageFolderDataset(tmp_path / "data", 32)
    assert len(data) == 8 and data.num_classes == 2 and data.classes == ["cats", "dogs"]
    x, y = data[5]
    assert x.shape == (3, 32, 32) and -1.0 <= x.min() and x.max() <= 1.0 and y.item() == 1
    summary = _train(tmp_path / "run", "--data", str(tmp_path / "data"), "--steps", "2", "--sample-every", "2")
    assert summary["steps"] == 2
    assert Image.open(summary["samples_png"]).mode == "RGB"
    assert _checkpoint(tmp_path / "run")["dataset"]["num_classes"] == 2


def test_image_folder_without_classes(tmp_path):
    _write_images(tmp_path / "flat", 5, 2)
    data = ImageFolderDataset(tmp_path / "flat", 32)
    assert data.num_classes == 0 and len(data) == 5
    summary = _train(tmp_path / "run", "--data", str(tmp_path / "flat"), "--steps", "1", "--sample-every", "0")
    assert summary["steps"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        ImageFolderDataset(tmp_path / "empty", 32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 32)


# -- the command line --------------------------------------------------------------------------------------


def test_command_line(tmp_path):
    """``python -m sagan_attn.train`` in a fresh process."""
    env = dict(os.environ)
    package_root = str(Path(sagan_attn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "sagan_attn.train", *TINY, "--steps", "1", "--sample-every", "0",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "images/s" in proc.stdout and (tmp_path / "checkpoints" / "last.pt").exists()


def test_example_script(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_sagan.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "examples" / "train_sagan.py"), run_name="__main__")
    assert exit_info.value.code == 0 and "--attention" in capsys.readouterr().out


def test_bad_arguments_are_rejected(capsys):
    for argv in (["--batch-size", "0"], ["--ema-decay", "1.5"], ["--steps", "-1"], ["--g-attn-res", "x"],
                 ["--fid-samples", "1"], ["--fid-every", "-2"], ["--dist-timeout", "0"]):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
    assert "must be" in capsys.readouterr().err
