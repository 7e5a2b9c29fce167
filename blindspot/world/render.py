"""A vectorised procedural renderer: coloured shapes (signed distance fields) on textured backgrounds."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .spec import BACKGROUNDS, CLASSES, COLORS, SIZES

RENDERER_VERSION = 1  # bump when pictures change: it is part of every cache fingerprint

COLOR_RGB = {
    "red": (225, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (245, 225, 40),
    "cyan": (40, 215, 225),
    "purple": (150, 60, 210),
}
SIZE_RADIUS = {"small": (5.0, 6.5), "large": (8.5, 10.5)}  # object radius range in pixels at 32x32


def _length(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y + 1e-12)


def _sdf_circle(x, y, r):
    return _length(x, y) - r


def _sdf_square(x, y, r):
    b = 0.8 * r
    qx, qy = x.abs() - b, y.abs() - b
    return _length(qx.clamp(min=0), qy.clamp(min=0)) + torch.maximum(qx, qy).clamp(max=0)


def _sdf_triangle(x, y, r):
    # Equilateral triangle pointing up (Inigo Quilez); y grows upwards here.
    k = math.sqrt(3.0)
    r = r * 0.95
    y = y + 0.25 * r
    px, py = x.abs() - r, y + r / k
    flip = px + k * py > 0
    px, py = torch.where(flip, (px - k * py) / 2, px), torch.where(flip, (-k * px - py) / 2, py)
    px = px - torch.minimum(torch.maximum(px, -2 * r), torch.zeros_like(px))
    return -_length(px, py) * torch.sign(py)


def _sdf_star(x, y, r):
    # Five-pointed star (Inigo Quilez), inner radius ratio 0.45.
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    rf = 0.45
    px = x.abs()
    py = y
    d = (k1x * px + k1y * py).clamp(min=0)
    px, py = px - 2 * d * k1x, py - 2 * d * k1y
    d = (k2x * px + k2y * py).clamp(min=0)
    px, py = px - 2 * d * k2x, py - 2 * d * k2y
    px = px.abs()
    py = py - r
    bax, bay = rf * -k1y, rf * k1x - 1.0
    bax, bay = bax * r, bay * r
    h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0, 1)
    return _length(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)


def _sdf_cross(x, y, r):
    bx, by = r, 0.36 * r
    px, py = x.abs(), y.abs()
    swap = py > px
    px, py = torch.where(swap, py, px), torch.where(swap, px, py)
    qx, qy = px - bx, py - by
    k = torch.maximum(qx, qy)
    wx = torch.where(k > 0, qx, by - px)
    wy = torch.where(k > 0, qy, -k)
    return torch.sign(k) * _length(wx.clamp(min=0), wy.clamp(min=0))


def _sdf_heart(x, y, r):
    s = 1.9 * r  # the unit heart spans about 1.1 wide and 1.0 high
    px, py = x.abs() / s, y / s + 0.5
    upper = py + px > 1.0
    d_upper = _length(px - 0.25, py - 0.75) - math.sqrt(2.0) / 4.0
    m = 0.5 * (px + py).clamp(min=0)
    d_lower = torch.sqrt(torch.minimum(px * px + (py - 1.0) ** 2, (px - m) ** 2 + (py - m) ** 2)) * torch.sign(px - py)
    return torch.where(upper, d_upper, d_lower) * s


SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "cross": _sdf_cross,
    "heart": _sdf_heart,
}


def _value_noise(n: int, h: int, w: int, cells: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Smooth random field in [-1, 1] made by upsampling a coarse grid."""
    coarse = torch.rand(n, 1, *cells, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)


def _mix(base: tuple[int, int, int], other: tuple[int, int, int], t: torch.Tensor) -> torch.Tensor:
    """Per-pixel blend of two colours by weight t in [0, 1] -> [n, 3, h, w] in 0..255."""
    a = torch.tensor(base, dtype=torch.float32).view(1, 3, 1, 1)
    b = torch.tensor(other, dtype=torch.float32).view(1, 3, 1, 1)
    return a + (b - a) * t


def _background(name: str, n: int, s: int, g: torch.Generator) -> torch.Tensor:
    """[n, 3, s, s] float texture in 0..255 for one background kind."""
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    fine = torch.rand(n, 1, s, s, generator=g)
    if name == "grass":
        blades = _value_noise(n, s, s, (3, s // 2), g)
        t = (0.5 + 0.45 * blades + 0.15 * (fine - 0.5)).clamp(0, 1)
        return _mix((40, 105, 30), (110, 185, 60), t)
    if name == "water":
        phase = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
        period = 5.0 + 2.0 * torch.rand(n, 1, 1, 1, generator=g)
        wobble = 1.2 * torch.sin(xx / 4.0 + phase)
        t = 0.5 + 0.5 * torch.sin(2 * math.pi * (yy + wobble) / period + phase)
        return _mix((25, 70, 160), (90, 150, 225), (t ** 3 + 0.1 * (fine - 0.5)).clamp(0, 1))
    if name == "sand":
        ripple = _value_noise(n, s, s, (4, 4), g)
        t = (0.5 + 0.25 * ripple + 0.5 * (fine - 0.5)).clamp(0, 1)
        return _mix((195, 160, 100), (235, 210, 150), t)
    if name == "snow":
        shade = _value_noise(n, s, s, (3, 3), g)
        speck = (fine > 0.9).float()
        t = (0.75 + 0.15 * shade - 0.45 * speck).clamp(0, 1)
        return _mix((175, 190, 215), (248, 250, 255), t)
    if name == "brick":
        row_h = 8.0
        shift = torch.rand(n, 1, 1, 1, generator=g) * 12
        offset = torch.rand(n, 1, 1, 1, generator=g) * row_h
        row = torch.floor((yy + offset) / row_h)
        col_x = xx + shift + (row % 2) * 6.0
        mortar = (((yy + offset) % row_h) < 1.3) | ((col_x % 12.0) < 1.3)
        brick_t = (0.3 + 0.4 * fine + 0.2 * _value_noise(n, s, s, (4, 4), g)).clamp(0, 1)
        bricks = _mix((120, 45, 30), (175, 85, 60), brick_t)
        return torch.where(mortar, _mix((190, 180, 170), (215, 205, 195), fine), bricks)
    if name == "night":
        glow = _value_noise(n, s, s, (2, 2), g)
        stars = (fine > 0.965).float() * (0.5 + 0.5 * torch.rand(n, 1, s, s, generator=g))
        t = (0.15 + 0.1 * glow).clamp(0, 1)
        sky = _mix((8, 10, 30), (40, 45, 90), t)
        return sky + stars * (255 - sky)
    raise ValueError(f"unknown background {name!r}; known: {list(BACKGROUNDS)}")


def render(
    classes: torch.Tensor,
    backgrounds: torch.Tensor,
    colors: torch.Tensor,
    sizes: torch.Tensor,
    seed: int,
    image_size: int = 32,
) -> torch.Tensor:
    """Render a batch as uint8 [n, 3, s, s]; inputs are indices into CLASSES, BACKGROUNDS, COLORS, SIZES."""
    n, s = len(classes), image_size
    g = torch.Generator().manual_seed(int(seed))
    scale = s / 32.0
    images = torch.zeros(n, 3, s, s)
    for b, name in enumerate(BACKGROUNDS):
        idx = (backgrounds == b).nonzero().flatten()
        if len(idx):
            images[idx] = _background(name, len(idx), s, g)
    # brightness jitter of the whole scene
    images = images * (0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g))

    lo = torch.tensor([SIZE_RADIUS[z][0] for z in SIZES])[sizes]
    hi = torch.tensor([SIZE_RADIUS[z][1] for z in SIZES])[sizes]
    radius = (lo + (hi - lo) * torch.rand(n, generator=g)) * scale
    margin = radius + 1.0 * scale
    cx = margin + (s - 2 * margin) * torch.rand(n, generator=g)
    cy = margin + (s - 2 * margin) * torch.rand(n, generator=g)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32) + 0.5, torch.arange(s, dtype=torch.float32) + 0.5,
                            indexing="ij")
    dx = xx - cx.view(n, 1, 1)
    dy = cy.view(n, 1, 1) - yy  # y up
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    px, py = cos * dx + sin * dy, -sin * dx + cos * dy
    r = radius.view(n, 1, 1)
    sdf = torch.zeros(n, s, s)
    for c, name in enumerate(CLASSES):
        idx = (classes == c).nonzero().flatten()
        if len(idx):
            sdf[idx] = SDF[name](px[idx], py[idx], r[idx])
    alpha = (0.5 - sdf / scale).clamp(0, 1).unsqueeze(1)
    rim = ((sdf / scale > -1.4) & (sdf < 0)).float().unsqueeze(1) * alpha

    rgb = torch.tensor([COLOR_RGB[c] for c in COLORS], dtype=torch.float32)[colors].view(n, 3, 1, 1)
    rgb = (rgb + torch.randn(n, 3, 1, 1, generator=g) * 10).clamp(0, 255)
    shading = 1.0 + 0.12 * (yy.view(1, 1, s, s) - cy.view(n, 1, 1, 1)) / (r.view(n, 1, 1, 1) + 1) * -1
    fill = (rgb * shading).clamp(0, 255)
    fill = fill * (1 - 0.35 * rim)
    images = images * (1 - alpha) + fill * alpha
    images = images + torch.randn(n, 3, s, s, generator=g) * 4.0
    return images.round().clamp(0, 255).to(torch.uint8)
