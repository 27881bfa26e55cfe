"""Reference computations and comparisons shared by the op tests."""
import torch


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm()
    diff = (out - ref).norm()
    return (diff / denom).item() if denom > 0 else diff.item()


# Error budget relative to a float64 reference (DESIGN.md "Numerics").
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def assert_close(out, ref, dtype, what=""):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    finite_ref = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out).cpu(), finite_ref.cpu()), f"{what}: non-finite values where the reference is finite (unwritten output?)"
    err = rel_err(out, ref)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:.0e}"


def randn(shape, rng, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, generator=rng, dtype=torch.float64).to(device=device, dtype=dtype)
