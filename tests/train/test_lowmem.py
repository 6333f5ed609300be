"""Low-memory AdamW (8-bit moments, stochastic rounding) and gradient release."""

import pytest
import torch

from lumina2_train.config import TrainConfig
from lumina2_train.errors import ConfigError
from lumina2_train.train.lowmem import FP8, GradientRelease, LowMemoryAdamW


def _quadratic_run(opt_factory, steps=30, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(64, 256, generator=gen)
    p = torch.nn.Parameter(torch.zeros(64, 256, dtype=dtype))
    opt = opt_factory([p])
    for _ in range(steps):
        ((p.float() - target) ** 2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return p.detach().float(), opt


def test_fp32_moments_match_torch_adamw():
    ours, _ = _quadratic_run(lambda ps: LowMemoryAdamW(ps, lr=1e-2, weight_decay=0.1, states="fp32"))
    ref, _ = _quadratic_run(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_8bit_moments_follow_adamw_and_take_two_bytes():
    ours, opt = _quadratic_run(lambda ps: LowMemoryAdamW(ps, lr=1e-2, states="8bit"))
    ref, _ = _quadratic_run(lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    assert (ours - ref).norm() / ref.norm() < 0.06  # fp8 moments keep 3 mantissa bits: a few % off AdamW
    st = next(iter(opt.state.values()))
    assert st["m_q"].dtype == FP8 and st["r_q"].dtype == FP8 and st["m_q"].numel() == 64 * 256


def test_bf16_weights_round_stochastically():
    p = torch.nn.Parameter(torch.ones(64, 256, dtype=torch.bfloat16))
    opt = LowMemoryAdamW([p], lr=1e-4, states="8bit")
    for _ in range(50):  # each step moves by lr, far below bf16's step of 2^-7 at 1.0
        p.grad = torch.ones_like(p)
        opt.step()
    assert float(1 - p.detach().float().mean()) == pytest.approx(50 * 1e-4, rel=0.1)


def test_nonfinite_gradient_leaves_weight_and_moments_unchanged():
    p = torch.nn.Parameter(torch.randn(16, 256))
    opt = LowMemoryAdamW([p], lr=1e-2, states="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    p.grad = torch.randn_like(p)
    p.grad[3, 7] = float("nan")
    opt.step()
    assert torch.equal(p.detach(), before[0])
    for k, v in before[1].items():
        assert torch.equal(opt.state[p][k].float(), v.float()), k


def test_state_dict_round_trip_keeps_8bit_moments():
    _, opt = _quadratic_run(lambda ps: LowMemoryAdamW(ps, lr=1e-2, states="8bit"), steps=3)
    p2 = torch.nn.Parameter(torch.zeros(64, 256))
    opt2 = LowMemoryAdamW([p2], lr=1e-2, states="8bit")
    opt2.load_state_dict(opt.state_dict())
    (a,), (b,) = opt.state.values(), opt2.state.values()
    assert b["m_q"].dtype == FP8 and torch.equal(a["m_q"].float(), b["m_q"].float()) and b["step"] == 3


def test_gradient_release_updates_in_backward_and_frees_gradients():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 256, generator=gen)
    w0 = torch.randn(256, 256, generator=gen)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    released = LowMemoryAdamW([a], lr=1e-2, states="8bit")
    GradientRelease(released)
    plain = LowMemoryAdamW([b], lr=1e-2, states="8bit")
    (x @ a).square().mean().backward()
    assert a.grad is None and not torch.equal(a.detach(), w0)
    (x @ b).square().mean().backward()
    plain.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_in_backward_needs_one_micro_step_and_no_clipping():
    errs = TrainConfig(optimizer_in_backward=True, grad_accum=2).errors()
    assert any("train.optimizer_in_backward needs grad_accum 1 and max_grad_norm 0" in e for e in errs)
    assert not TrainConfig(optimizer_in_backward=True, max_grad_norm=0.0, optimizer_states="8bit").errors()
    assert any("train.optimizer_states" in e for e in TrainConfig(optimizer_states="4bit").errors())
    assert any("work with optimizer 'adamw'" in e for e in TrainConfig(optimizer_states="8bit",
                                                                       optimizer="lion").errors())
    with pytest.raises(ConfigError):
        from lumina2_train.config import RunConfig

        RunConfig(train=TrainConfig(optimizer_in_backward=True)).validate(need_data=False)
