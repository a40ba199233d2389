"""Smoke test of an installed sagan-attn (a wheel in an environment that holds only torch and it).

    python tests/smoke/smoke_test.py [--torch-version 2.13.0+cpu]

The package imported must be the installed one, not the source tree's python/ (checked).
Checks: the import, what the build says it holds and that its op library is the wheel's (beside _C), the
op's forward and backward against a few lines of plain PyTorch (the notebook's bmm math) in float64, and
SelfAttention2d forward and backward. With --torch-version, also that the installed torch is still that
one (installing must not replace it).
Needs nothing but torch: no pytest, no numpy.
"""
import argparse
import sys
from pathlib import Path

import torch


def bmm_self_attn(f, g, h, x, gamma, scale):
    """The notebook module's math, materialising the (B, Nq, Nk) map."""
    beta = torch.softmax(scale * torch.bmm(f.transpose(1, 2), g), dim=-1)
    return gamma * torch.bmm(h, beta.transpose(1, 2)) + x


def check_import(expected_torch):
    import sagan_attn

    where = Path(sagan_attn.__file__).resolve()
    source = Path(__file__).resolve().parents[2] / "python"
    if source in where.parents:
        sys.exit(f"smoke test: sagan_attn was imported from the source tree ({where}), not the installed "
                 "package")
    info = sagan_attn.build_info()
    print(f"sagan_attn {sagan_attn.__version__} from {where.parent}; torch {torch.__version__}; {info}")
    # The ops come from the wheel's libsagan_attn.so, beside _C, never from a build folder.
    library = Path(sagan_attn.library_path()).resolve()
    if library != where.parent / "libsagan_attn.so":
        sys.exit(f"smoke test: the op library loaded is {library}, not the package's "
                 f"{where.parent / 'libsagan_attn.so'}")
    if expected_torch and torch.__version__ != expected_torch:
        sys.exit(f"smoke test: torch is {torch.__version__}, expected {expected_torch} (the one installed "
                 "before sagan-attn: installing it must not replace torch)")
    built = info.get("torch", "")
    # LibTorch has no stable C++ ABI across minor versions: the build must match the torch it runs with.
    if built and built.split(".")[:2] != torch.__version__.split(".")[:2]:
        sys.exit(f"smoke test: built against torch {built}, running with {torch.__version__}")
    return sagan_attn


def check_op(sagan_attn):
    # float64 with odd sizes (N prime, Nk != Nq) so ragged tiles are exercised; both sides accumulate in
    # float64, so they agree to rounding (~1e-15 relative): 1e-10 is far above that and far below any
    # real error (a wrong tile or a wrong softmax row gives errors of order 1e-2 and more).
    torch.manual_seed(0)
    B, Cqk, Cv, Nq, Nk = 2, 3, 10, 97, 41
    args = [torch.randn(B, Cqk, Nq), torch.randn(B, Cqk, Nk), torch.randn(B, Cv, Nk),
            torch.randn(B, Cv, Nq), torch.tensor(0.7)]
    args = [a.double().requires_grad_() for a in args]
    scale = 0.5
    y = torch.ops.sagan.self_attn(*args, scale)
    y_ref = bmm_self_attn(*args, scale)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, args, dy)
    grads_ref = torch.autograd.grad(y_ref, args, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name, got, want in zip(["f", "g", "h", "x", "gamma"], grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
    y32 = sagan_attn.self_attn(*[a.detach().float() for a in args[:4]], gamma=0.7, scale=scale)
    torch.testing.assert_close(y32.double(), y_ref.detach(), rtol=1e-4, atol=1e-4)
    print(f"op: forward and backward match the bmm math (B={B}, Cqk={Cqk}, Cv={Cv}, Nq={Nq}, Nk={Nk})")


def check_module(sagan_attn):
    torch.manual_seed(1)
    attn = sagan_attn.SelfAttention2d(16)
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    # gamma starts at 0 (SAGAN): the block is the identity, exactly.
    torch.testing.assert_close(attn(x), x, rtol=0, atol=0)
    with torch.no_grad():
        attn.gamma.fill_(0.5)
    y = attn(x)
    if y.shape != x.shape or not torch.isfinite(y).all():
        sys.exit(f"smoke test: SelfAttention2d gave shape {tuple(y.shape)} (expected {tuple(x.shape)}) "
                 f"or non-finite values")
    y.square().sum().backward()
    for name, p in [("x", x)] + list(attn.named_parameters()):
        if p.grad is None or not torch.isfinite(p.grad).all():
            sys.exit(f"smoke test: SelfAttention2d backward gave no finite gradient for {name}")
    # Not every gradient must be non-zero (a key bias shifts each softmax row by a constant: its
    # gradient is 0 in exact arithmetic), but those of the input and of gamma must be.
    for name, grad in [("x", x.grad), ("gamma", attn.gamma.grad)]:
        if not grad.abs().sum() > 0:
            sys.exit(f"smoke test: SelfAttention2d backward gave a zero gradient for {name}")
    print("module: SelfAttention2d forward and backward")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-version", default="", help="the torch version that must still be installed")
    args = parser.parse_args()
    sagan_attn = check_import(args.torch_version)
    check_op(sagan_attn)
    check_module(sagan_attn)
    print("smoke test passed")


if __name__ == "__main__":
    main()
