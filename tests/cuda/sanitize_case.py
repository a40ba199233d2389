"""A small forward + backward through every CUDA kernel of sagan-attn, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python tests/cuda/sanitize_case.py [--quick]
    compute-sanitizer --tool racecheck python tests/cuda/sanitize_case.py [--quick]

Covers the tensor-core kernels (bf16, fp16; aligned N and odd N; atomic and deterministic df), the SIMT
kernels (fp32, fp64, and bf16 forced), Cqk padding and ragged tiles. --quick runs one small case,
ragged on every side, through each of those kernels (scripts/gpu_verify.sh: the sanitizers slow
every launch down). Exits non-zero on a CUDA error.
"""
import argparse
import os

import torch

import sagan_attn  # noqa: F401

OP = torch.ops.sagan.self_attn


def run(dtype, B, Cqk, Cv, Nq, Nk, deterministic=False):
    # Printed first: a sanitizer report that follows belongs to this case.
    kernels = os.environ.get("SAGAN_ATTN_CUDA_KERNELS", "auto")
    print(f"case {str(dtype).replace('torch.', '')} B={B} Cqk={Cqk} Cv={Cv} Nq={Nq} Nk={Nk} "
          f"deterministic={deterministic} kernels={kernels}", flush=True)
    gen = torch.Generator().manual_seed(B * 100 + Nq)
    mk = lambda *s: torch.randn(*s, generator=gen).to(dtype).cuda().requires_grad_(True)  # noqa: E731
    f, g, h, x = mk(B, Cqk, Nq), mk(B, Cqk, Nk), mk(B, Cv, Nk), mk(B, Cv, Nq)
    gamma = torch.tensor(0.5, dtype=dtype, device="cuda", requires_grad=True)
    torch.use_deterministic_algorithms(deterministic)
    y = OP(f, g, h, x, gamma, 0.3)
    y.backward(torch.randn_like(y))
    torch.cuda.synchronize()
    torch.use_deterministic_algorithms(False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small ragged case through every kernel")
    args = parser.parse_args()
    # Cqk 10 (padded to 16), Cv 70 (a partial value chunk), Nq 97 and Nk 61 (odd: ragged tiles, element
    # loads): the edges where an out-of-bounds access would be, at B = 1.
    ragged = (1, 10, 70, 97, 61)
    cases = [ragged] if args.quick else [(2, 8, 64, 64, 64), ragged, (2, 33, 130, 128, 200), (1, 128, 16, 72, 40)]
    for dtype in (torch.bfloat16, torch.float16):
        for c in cases:
            run(dtype, *c)
            run(dtype, *c, deterministic=True)
    for dtype in (torch.float32, torch.float64):
        for c in cases[:3]:
            run(dtype, *c)
            run(dtype, *c, deterministic=True)
    os.environ["SAGAN_ATTN_CUDA_KERNELS"] = "simt"
    run(torch.bfloat16, *ragged)
    print("sanitize_case: all kernels ran")


if __name__ == "__main__":
    main()
