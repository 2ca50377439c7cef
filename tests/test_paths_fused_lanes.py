"""The float-lane paths of the fused kernels against the float64 reference.

For float32 input the kernels sum in float lanes folded into double every few terms (norms,
channel-last moments around a shift, ``(N, C)`` tiles, backward sums), and fall back to
double where a difference of nearly equal values could cancel: a row whose shift (its first
value) is far from its mean, a ``(N, C)`` channel far from row 0's value, or channels whose
mean is many standard deviations. Each case is built to take one of these paths; all must
meet the tolerance of ``test_paths_fused.py`` (1e-5 relative for float32).
"""

from __future__ import annotations

import pytest
import torch

from _reference import reference_l2bn, relative_error
from l2bn import L2BatchNorm1d, L2BatchNorm2d, backends, l2_batch_norm
from l2bn._impl import cpu

pytestmark = pytest.mark.skipif(
    not backends.available("cpu"), reason=str(backends.unavailable_reason("cpu"))
)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def _errors(
    x64: torch.Tensor, dy64: torch.Tensor, channels_last: bool, composite: bool = False
) -> dict[str, float]:
    """Relative errors of the fused float32 layer (or, with ``composite``, of the float32
    reference formula on native BatchNorm) against the float64 reference."""
    c = x64.shape[1]
    g = torch.Generator().manual_seed(0)
    w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
    b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=g)
    layer = (L2BatchNorm1d if x64.dim() == 2 else L2BatchNorm2d)(c)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    x = _layout(x64.float(), channels_last).requires_grad_()
    dy = _layout(dy64.float(), channels_last)
    if composite:
        rm32, rv32 = layer.running_mean, layer.running_var
        y = reference_l2bn(x, rm32, rv32, layer.weight, layer.bias, training=True)
        y.backward(dy)
        with torch.no_grad():
            y_eval = reference_l2bn(x, rm32, rv32, layer.weight, layer.bias, training=False)
    else:
        with backends.flags(cpu=True, pytorch=False):
            y = layer(x)
            y.backward(dy)
            layer.eval()
            with torch.no_grad():
                y_eval = layer(x.detach())
    xr = x64.clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    yr = reference_l2bn(xr, rm, rv, wr, br, training=True)
    yr.backward(dy64)
    with torch.no_grad():
        yr_eval = reference_l2bn(x64, rm, rv, wr, br, training=False)
    pairs = {
        "y": (y, yr),
        "dx": (x.grad, xr.grad),
        "dw": (layer.weight.grad, wr.grad),
        "db": (layer.bias.grad, br.grad),
        "running_var": (layer.running_var, rv),
        "eval y": (y_eval, yr_eval),
    }
    return {name: relative_error(a, r) for name, (a, r) in pairs.items()}


# Channel counts that use channel blocks (64 channels under AVX-512, 32 under AVX2, 16
# otherwise), single vectors and leftovers; maps and batches with several fold groups and
# remainders; rows shorter than a step of 32 values (4x4: whole vectors only; 3x8: whole
# vectors and a tail).
SHAPES_2D = [
    (6, 48, 9, 7),
    (5, 37, 6, 6),
    (3, 16, 17, 17),
    (7, 40, 4, 4),
    (9, 24, 3, 8),
    (4, 100, 6, 6),
]


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("channels_last", [False, True])
def test_float_lanes_well_conditioned(shape, channels_last):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    errors = _errors(x, dy, channels_last)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("shape", [(2, 16, 256, 256), (2, 37, 128, 128)])
def test_channel_last_shift_far_from_the_mean_is_recomputed(shape):
    """Each row's first 8 values (their mean is the shift of its float sums) are 1e4
    standard deviations off, so that E[(x - shift)^2] is about M / 8 (thousands of) times
    the variance: past kCondLimitShifted, these rows take the centred pass in double. (The
    float sums alone were measured within tolerance here too: the fallback is a margin.)"""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[:, :, 0, :8] = 1e4
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    errors = _errors(x, dy, channels_last=True)
    assert max(errors.values()) < 1e-5, errors


# (20, 1100) and (7, 5000): rows wider than a span of 512 channels (the forward and backward
# sums go row by row in spans, the last one partial; 7 rows, less than a tile of 8), and
# projections with several float folds and a remainder. (40, 16), (64, 48) and (50, 24):
# whole vectors after the last step of 32 values (a norm's and a projection's rest, taken in
# float lanes) under every instruction set.
@pytest.mark.parametrize(
    "shape", [(100, 70), (40, 16), (9, 33), (20, 1100), (7, 5000), (64, 48), (50, 24)]
)
def test_vector_float_tiles(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64) + 0.3
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    errors = _errors(x, dy, channels_last=False)
    assert max(errors.values()) < 1e-5, errors


# Rows shorter than a step of 32 values: their norms (and the backward's projections) are
# summed several rows at a time, side by side in vectors (kernels of every instruction
# set: 16, 8 or 4 float lanes, so C below, at and between whole vectors of each), 37 rows
# (groups of 8, 4, 2 rows and a partial last one). Rows of very different norms, so that
# plain BatchNorm (or a norm taken from another row, or missing a lane) is far outside the
# tolerance.
@pytest.mark.parametrize("c", [2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 24, 31])
def test_short_rows_norms(c):
    g = torch.Generator().manual_seed(5)
    x64 = torch.randn(37, c, generator=g, dtype=torch.float64)
    x64 *= torch.logspace(-3, 3, 37, dtype=torch.float64).view(37, 1)
    dy64 = torch.randn(37, c, generator=g, dtype=torch.float64)
    errors = _errors(x64, dy64, channels_last=False)
    assert max(errors.values()) < 1e-5, errors
    # rho of every row, from the float32 input, in float64: squares rounded to float are
    # the only error (a relative 6e-8 of each).
    x = x64.float()
    ones, zeros = torch.ones(c), torch.zeros(c)
    _, rho, active, *_ = cpu._train_forward(x, ones, zeros, None, None, 0.1, 1e-5, 1e-12, True)
    expected = x.double().norm(dim=1) / c**0.5
    assert active.all()
    torch.testing.assert_close(rho, expected, rtol=1e-7, atol=0)
    # A row's eval output has the same bits whichever place of a group of rows it takes.
    rm, rv = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
    with backends.flags(cpu=True, pytorch=False):
        whole = l2_batch_norm(x, rm, rv, training=False)
        for start in (0, 1, 5, 36):
            alone = l2_batch_norm(x[start:], rm, rv, training=False)
            assert torch.equal(alone[0], whole[start])


@pytest.mark.parametrize("shape", [(300, 70), (200, 16)])
def test_vector_row_zero_far_from_the_mean(shape):
    """Every row is 100 +- 3 but row 0, which is its negative: the shift of the float tiles
    (the mean of rows 0-7) is far from the channel means, and the channels take the
    centred pass in double. (A shift averaged over rows keeps E[(xh - shift)^2] within N
    times the variance, where the float sums alone were measured within tolerance too.)"""
    g = torch.Generator().manual_seed(4)
    x = 100 + 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    x[0] = -x[0]
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    errors = _errors(x, dy, channels_last=False)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize(
    "shape,channels_last",
    [((8, 40, 5, 5), False), ((8, 40, 5, 5), True), ((8, 40, 4, 4), True)],
)
def test_backward_of_offset_channels_takes_double_sums(shape, channels_last):
    """Channel means of 1e3 standard deviations, on values exact in float32: the backward
    sums run in double, where float lanes would lose dweight in x - mean (measured: 1.8e-5
    with float lanes forced, 2.5e-8 in double). The output itself cannot reach 1e-5 in
    float32 here (y = a * x + b cancels at x = 1e3), so it is held to twice the error of
    the float32 formula on native BatchNorm, as in test_core_parity. (8, 40, 4, 4)
    channel-last is a small map (rows of C values): its forward sums the channels again,
    centred, in double."""
    g = torch.Generator().manual_seed(5)
    x = 1000 + torch.randint(-64, 65, shape, generator=g).double() / 64
    dy = torch.randn(shape, generator=g, dtype=torch.float64).float().double()
    ours = _errors(x, dy, channels_last)
    theirs = _errors(x, dy, channels_last, composite=True)
    assert ours.pop("y") <= max(1e-5, 2 * theirs["y"])
    assert max(ours.values()) < 1e-5, ours


def test_eval_norm_of_large_samples():
    """Float-lane norms over samples of 64k values (many folds) in both layouts."""
    g = torch.Generator().manual_seed(6)
    x64 = torch.rand((3, 16, 64, 64), generator=g, dtype=torch.float64) * 4
    rm, rv = torch.rand(16, dtype=torch.float64), torch.rand(16, dtype=torch.float64) + 0.5
    expected = reference_l2bn(x64, rm, rv, training=False)
    for channels_last in (False, True):
        x = _layout(x64.float(), channels_last)
        with backends.flags(cpu=True, pytorch=False), torch.no_grad():
            from l2bn import l2_batch_norm

            y = l2_batch_norm(x, rm.float(), rv.float())
        assert relative_error(y, expected) < 1e-5


@pytest.mark.parametrize(
    "shape,channels_last", [((64, 128), False), ((8, 16, 2, 2), True), ((8, 64, 4, 4), True)]
)
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_training_of_channels_far_from_zero_takes_exact_norms(shape, channels_last, offset):
    """Rows of C values ((N, C) input, channel-last maps of at most 16 positions) with
    channel means of 1e3 and 1e4 standard deviations: each sample's norm is summed again
    with its squares in double (a float-lane norm, off by about 1e-8, moves every xh of its
    sample by that much of the mean, which xh - mean then cancels: dweight was 6e-5 off at
    1e4). The output is held to twice the float32 formula's error, as above."""
    g = torch.Generator().manual_seed(7)
    x = offset + torch.randn(shape, generator=g, dtype=torch.float64)
    x = x.float().double()  # exact in float32: the reference sees the same values
    dy = torch.randn(shape, generator=g, dtype=torch.float64).float().double()
    ours = _errors(x, dy, channels_last)
    theirs = _errors(x, dy, channels_last, composite=True)
    for name in ("y", "eval y"):
        assert ours.pop(name) <= max(1e-5, 2 * theirs[name]), name
    assert max(ours.values()) < 1e-5, ours


# The (N, C) input gradient of rows of 32 to 1024 values runs each row's projection in one
# loop with the output of the row before it (pipelined_grad_rows, vector_passes.h), the
# other C row by row in tiles. Rows whose norms are 1e-3 to 1e3 apart, so that a row finished
# with its neighbour's norm or projection is off by far more than the tolerance in its own
# scale (the error is taken row by row), a zero row (clamped by l2_eps) among them, C with
# and without values after the whole vectors, and 200 rows: a range of rows a thread, each
# with a first and a last row.
@pytest.mark.parametrize("c", [32, 40, 100, 512, 1024, 1100])
def test_vector_input_gradient_row_by_row(c):
    g = torch.Generator().manual_seed(11)
    n = 200
    scales = 10.0 ** torch.empty(n, 1, dtype=torch.float64).uniform_(-3, 3, generator=g)
    x64 = (torch.randn(n, c, generator=g, dtype=torch.float64) + 0.3) * scales
    x64[n // 3] = 0
    dy64 = torch.randn(n, c, generator=g, dtype=torch.float64)
    w = torch.empty(c, dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
    b = torch.empty(c, dtype=torch.float64).uniform_(-1, 1, generator=g)
    x = x64.float().requires_grad_()
    with backends.flags(cpu=True, pytorch=False):
        l2_batch_norm(x, None, None, w.float(), b.float(), training=True).backward(dy64.float())
    xr = x64.clone().requires_grad_()
    reference_l2bn(xr, None, None, w, b, training=True).backward(dy64)
    rows = [relative_error(x.grad[i], xr.grad[i]) for i in range(n)]
    assert max(rows) < 1e-5, max(rows)
