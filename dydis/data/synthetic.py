"""A procedural room scene with the Shapes3D factor structure: the dataset that needs no download.

Each image shows a floor receding into the distance, two walls meeting in a corner and an
object standing in the middle of the floor, lit by a soft area light, the way Shapes3D
(Burgess & Kim 2018) composes its scenes. The six factors are Shapes3D's, in its order and
with its values: three hues, the object's scale and shape, and an orientation that turns the
whole view about the vertical axis (so the wall corner sweeps across the image).

Why it is fast: the geometry depends only on (scale, shape, orientation), and with a fixed
light each surface's colour is its hue times a shading factor. So the renderer ray-casts each
geometry once, at 4x4 supersampling, into per-pixel "coverage x shading" maps of the three
surfaces; an image is then ``sum_s map[geometry, :, :, s] * rgb(hue_s)``, a few elementwise
float32 operations per pixel.

Why it is bit-reproducible: the maps use only + - * / and sqrt on float64 arrays (IEEE
correctly rounded, so the same on every machine), sums run in a fixed order rather than
through BLAS or reductions whose order may depend on the CPU, and the few sines and cosines
are Python ``math`` scalars. Nothing is random.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from dydis.data.factors import FactorSpace
from dydis.data.source import IMAGE_SHAPE, Block, Source
from dydis.errors import ConfigError

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_GRID = (10, 10, 10, 8, 4, 15)
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")  # Shapes3D's shape order

SUPERSAMPLE = 4  # rays per pixel side: 16 rays per pixel antialias edges well enough at 64x64
RESOLUTION = IMAGE_SHAPE[0]

# Scene, in world units with y up. The object's footprint is centred at the origin; the walls
# are the planes x = ROOM and z = ROOM, so the room is open towards the camera.
ROOM = 5.0
OBJECT_BOUNDS = (1.25, 2.5 * 1.25)  # half-width and height of a box holding every shape at scale <= 1.25
CAMERA_DISTANCE = 10.0
CAMERA_PITCH = 24.0  # degrees below horizontal: enough floor to read the perspective
CAMERA_TARGET_Y = 1.2
FIELD_OF_VIEW = 42.0  # vertical, degrees
BASE_AZIMUTH = 45.0  # orientation 0 looks straight into the corner
LIGHT = (-6.0, 11.0, -2.0)  # high, in front and to the right: shadows fall back-left, on the floor only
LIGHT_RADIUS = 1.6  # area light: a horizontal disk, which softens the shadow's edge
LIGHT_SAMPLES = 40
AO_SAMPLES = 40
AO_RANGE = 1.2  # only occluders this close darken the floor, so ambient occlusion stays local
AMBIENT, DIFFUSE = 0.38, 0.78
TEXTURE_HALF_WIDTH = 4.25  # shadows are baked on the floor square |x|, |z| <= this, which holds them all
TEXTURE_SIZE = 104  # texels 0.08 apart: finer than a pixel's footprint on the floor near the object

_EPS = 1e-9

__all__ = ["FACTOR_NAMES", "SHAPES3D_GRID", "SHAPE_NAMES", "SyntheticSource", "check_grid", "compose",
           "factor_values", "hue_colours", "render", "surface_maps"]


class Rays(NamedTuple):
    """Rays ``o + t d``; each component is an array, or a float shared by every ray.

    Directions need not be unit length: distances ``t`` are then in units of ``|d|``.
    """

    ox: np.ndarray | float
    oy: np.ndarray | float
    oz: np.ndarray | float
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray

    def take(self, index: np.ndarray) -> "Rays":
        """The rays ``index`` of rays that share one origin."""
        return self._replace(dx=self.dx[index], dy=self.dy[index], dz=self.dz[index])


class Hit(NamedTuple):
    """Where rays first enter a solid: distance ``t`` (inf where they miss) and unit normal."""

    t: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray


# --------------------------------------------------------------------------- factors


def check_grid(grid: Sequence[int]) -> tuple[int, ...]:
    """The grid as a tuple of ints, or ConfigError: six positive sizes, at most 4 shapes."""
    expected = f"grid must be 6 positive integers ({', '.join(FACTOR_NAMES)})"
    try:
        sizes = tuple(int(n) for n in grid)
        exact = all(not isinstance(n, bool) and int(n) == n for n in grid)
    except (TypeError, ValueError):
        raise ConfigError(f"{expected}, got {grid!r}") from None
    if len(sizes) != len(FACTOR_NAMES) or not exact or min(sizes) < 1:
        raise ConfigError(f"{expected}, got {tuple(grid)!r}")
    if sizes[4] > len(SHAPE_NAMES):
        raise ConfigError(f"grid: shape takes at most {len(SHAPE_NAMES)} values {SHAPE_NAMES}, got {sizes[4]}")
    return sizes


def factor_values(grid: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Each factor's values on ``grid``, spaced the way Shapes3D spaces them.

    Hues are k/n, scale linspace(0.75, 1.25, n), shape the first n of ``SHAPE_NAMES`` (as
    indices 0..n-1) and orientation linspace(-30, 30, n) degrees. A factor with a single
    value takes the middle of its range (scale 1, orientation 0): the typical scene rather
    than an extreme one.
    """
    sizes = check_grid(grid)

    def spaced(lo: float, hi: float, n: int) -> np.ndarray:
        return np.array([(lo + hi) / 2]) if n == 1 else np.linspace(lo, hi, n)

    hues = tuple(np.arange(n) / n for n in sizes[:3])
    return (*hues, spaced(0.75, 1.25, sizes[3]), np.arange(sizes[4], dtype=np.float64), spaced(-30.0, 30.0, sizes[5]))


def hue_colours(n: int) -> np.ndarray:
    """Fully saturated, full-value RGB colours (n, 3) in [0, 1] of the hues k/n."""
    return np.array([colorsys.hsv_to_rgb(k / n, 1.0, 1.0) for k in range(n)], dtype=np.float32)


# --------------------------------------------------------------------------- ray casting


def _nearest_root(a, b, c) -> np.ndarray:
    """Smaller root of a t^2 + 2 b t + c = 0 where it is real and positive; inf elsewhere."""
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (a > 0) & (t > _EPS), t, np.inf)


def _nearer(first: Hit, second: Hit) -> Hit:
    """Per ray, the nearer of two hits: the entry into the union of two convex solids."""
    closer = second.t < first.t
    return Hit(*(np.where(closer, b, a) for a, b in zip(first, second)))


def _hit_sphere(rays: Rays, cy: float, r: float) -> Hit:
    """Entry into the sphere of radius r centred at (0, cy, 0)."""
    ox, oy, oz = rays.ox, rays.oy - cy, rays.oz
    a = rays.dx * rays.dx + rays.dy * rays.dy + rays.dz * rays.dz
    b = ox * rays.dx + oy * rays.dy + oz * rays.dz
    t = _nearest_root(a, b, ox * ox + oy * oy + oz * oz - r * r)
    with np.errstate(invalid="ignore"):
        return Hit(t, (ox + t * rays.dx) / r, (oy + t * rays.dy) / r, (oz + t * rays.dz) / r)


def _hit_tube(rays: Rays, r: float, y0: float, y1: float) -> Hit:
    """Entry through the side of the vertical tube x^2 + z^2 = r^2 between heights y0 and y1."""
    a = rays.dx * rays.dx + rays.dz * rays.dz
    b = rays.ox * rays.dx + rays.oz * rays.dz
    t = _nearest_root(a, b, rays.ox * rays.ox + rays.oz * rays.oz - r * r)
    with np.errstate(invalid="ignore"):
        y = rays.oy + t * rays.dy
        t = np.where((y >= y0) & (y <= y1), t, np.inf)
        return Hit(t, (rays.ox + t * rays.dx) / r, np.zeros_like(t), (rays.oz + t * rays.dz) / r)


def _hit_top(rays: Rays, r: float, y: float) -> Hit:
    """Hit from above on the horizontal disk of radius r at height y (a cylinder's lid)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y - rays.oy) / rays.dy
        px, pz = rays.ox + t * rays.dx, rays.oz + t * rays.dz
        t = np.where((t > _EPS) & (rays.dy < 0) & (px * px + pz * pz <= r * r), t, np.inf)
    zeros = np.zeros_like(t)
    return Hit(t, zeros, zeros + 1.0, zeros)


def _hit_box(rays: Rays, half: float, height: float) -> Hit:
    """Entry into the box |x|, |z| <= half, 0 <= y <= height (the slab method)."""
    near = far = None
    entries = []
    for o, d, lo, hi in ((rays.ox, rays.dx, -half, half), (rays.oy, rays.dy, 0.0, height),
                         (rays.oz, rays.dz, -half, half)):
        d = np.where(d == 0, 1e-300, d)  # why: keeps (lo - o) / d a signed infinity, never nan
        t_lo, t_hi = (lo - o) / d, (hi - o) / d
        enter = np.minimum(t_lo, t_hi)
        entries.append((enter, -np.sign(d)))
        near = enter if near is None else np.maximum(near, enter)
        leave = np.maximum(t_lo, t_hi)
        far = leave if far is None else np.minimum(far, leave)
    t = np.where((near <= far) & (near > _EPS), near, np.inf)
    return Hit(t, *(np.where(enter == near, sign, 0.0) for enter, sign in entries))


def hit_object(rays: Rays, shape: int, scale: float) -> Hit:
    """Where rays enter the object of ``shape`` and ``scale`` standing on the floor at the origin.

    Every shape is convex, so the entry point is the only visible one and a shadow ray is
    blocked exactly when it enters. The solid of size ``scale`` is hit where the unit solid is
    hit by the rays with origins divided by ``scale``, at ``scale`` times the distance.
    """
    unit = rays._replace(ox=rays.ox / scale, oy=rays.oy / scale, oz=rays.oz / scale)
    name = SHAPE_NAMES[shape]
    if name == "cube":
        hit = _hit_box(unit, 1.0, 2.0)
    elif name == "cylinder":
        hit = _nearer(_hit_tube(unit, 1.0, 0.0, 2.0), _hit_top(unit, 1.0, 2.0))
    elif name == "sphere":
        hit = _hit_sphere(unit, 1.0, 1.0)
    else:  # capsule: a tube with hemispherical ends, slimmer and taller than the others
        r, y0, y1 = 0.62, 0.62, 1.88
        hit = _nearer(_nearer(_hit_tube(unit, r, y0, y1), _hit_sphere(unit, y1, r)), _hit_sphere(unit, y0, r))
    return hit._replace(t=hit.t * scale)


def camera_rays(orientation: float) -> Rays:
    """One unit ray per subpixel of the supersampled image, row-major from the top-left.

    The camera orbits the object at a fixed height and pitch: ``orientation`` (degrees) turns
    it about the vertical axis, which is the same as turning the whole room the other way, as
    Shapes3D's orientation does.
    """
    azimuth, pitch = math.radians(BASE_AZIMUTH + orientation), math.radians(CAMERA_PITCH)
    fx, fz = math.sin(azimuth), math.cos(azimuth)  # horizontal viewing direction
    forward = (math.cos(pitch) * fx, -math.sin(pitch), math.cos(pitch) * fz)
    right = (-fz, 0.0, fx)  # forward x world-up, already unit length
    up = (right[1] * forward[2] - right[2] * forward[1], right[2] * forward[0] - right[0] * forward[2],
          right[0] * forward[1] - right[1] * forward[0])
    origin = [t - CAMERA_DISTANCE * f for t, f in zip((0.0, CAMERA_TARGET_Y, 0.0), forward)]

    n = RESOLUTION * SUPERSAMPLE
    half = math.tan(math.radians(FIELD_OF_VIEW) / 2)
    s = (2 * (np.arange(n) + 0.5) / n - 1) * half  # subpixel centres on the image plane at distance 1
    v, u = np.meshgrid(-s, s, indexing="ij")  # image rows run downwards
    u, v = u.ravel(), v.ravel()
    d = [forward[k] + u * right[k] + v * up[k] for k in range(3)]
    norm = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    return Rays(*origin, d[0] / norm, d[1] / norm, d[2] / norm)


# --------------------------------------------------------------------------- shading


def _diffuse(px, py, pz, nx, ny, nz) -> np.ndarray:
    """Lambert's max(0, n.l) towards the light's centre, with a gentle distance falloff."""
    lx, ly, lz = LIGHT[0] - px, LIGHT[1] - py, LIGHT[2] - pz
    dist2 = lx * lx + ly * ly + lz * lz
    cosine = np.maximum(nx * lx + ny * ly + nz * lz, 0.0) / np.sqrt(dist2)
    return cosine * (200.0 / (40.0 + dist2))  # why: about 1 at the object, dimmer at the far corner


def _edge_darkening(distance, depth: float = 0.3, width: float = 0.8) -> np.ndarray:
    """Cheap ambient occlusion towards a concave edge (floor meets wall, wall meets wall)."""
    q = distance / width
    return 1.0 - depth / (1.0 + q * q)


def _disk_samples(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points spread evenly over the unit disk (a golden-angle spiral): fixed, no randomness."""
    golden = math.pi * (3.0 - math.sqrt(5.0))
    radius = [math.sqrt((k + 0.5) / n) for k in range(n)]
    a = [r * math.cos(k * golden) for k, r in enumerate(radius)]
    b = [r * math.sin(k * golden) for k, r in enumerate(radius)]
    return np.array(a), np.array(b)


def floor_textures(shape: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft shadow and ambient occlusion that the object casts on the floor, (T, T) each, [z, x].

    The light and the object are fixed in the world (only the camera moves), so both depend
    on shape and scale alone and are baked once on a square of floor around the object. The
    shadow is the fraction of the area light's sample points that the object leaves visible,
    the occlusion the cosine-weighted fraction of short rays into the sky that escape it.
    Both are counts of 0/1 outcomes, so their sums are exact in any order. Only texels that
    a cheap bound cannot clear are ray-cast; the rest stay 1.
    """
    g = np.linspace(-TEXTURE_HALF_WIDTH, TEXTURE_HALF_WIDTH, TEXTURE_SIZE)
    z, x = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    shadow, open_sky = np.ones(TEXTURE_SIZE * TEXTURE_SIZE), np.ones(TEXTURE_SIZE * TEXTURE_SIZE)
    y = 1e-6  # why: a hair above the floor, so the object's base never blocks its own floor

    # Every shape lies in the sphere of radius 1.75 * scale about (0, scale, 0). A sample ray
    # strays from the ray to the light's centre by at most LIGHT_RADIUS, so a centre ray that
    # misses the sphere grown by LIGHT_RADIUS leaves the texel fully lit.
    i = np.flatnonzero(_segment_near_point(x, z, LIGHT, (0.0, scale, 0.0), 1.75 * scale + LIGHT_RADIUS))
    a, b = _disk_samples(LIGHT_SAMPLES)
    xi, zi = x[i, None], z[i, None]
    to_light = Rays(xi, y, zi, LIGHT[0] + LIGHT_RADIUS * a - xi, LIGHT[1] - y + 0 * xi,
                    LIGHT[2] + LIGHT_RADIUS * b - zi)  # (texels, samples); the light sits at t = 1
    shadow[i] = (hit_object(to_light, shape, scale).t > 1.0).sum(axis=1) / LIGHT_SAMPLES

    reach = scale + AO_RANGE  # unit shapes are 1 wide either side of the axis; sky rays AO_RANGE long
    i = np.flatnonzero((np.abs(x) < reach) & (np.abs(z) < reach))
    a, b = _disk_samples(AO_SAMPLES)  # lifted onto the hemisphere: cosine-weighted directions
    xi, zi = x[i, None], z[i, None]
    sky = Rays(xi, y, zi, a + 0 * xi, np.sqrt(np.maximum(1.0 - a * a - b * b, 0.0)) + 0 * xi, b + 0 * xi)
    open_sky[i] = (hit_object(sky, shape, scale).t > AO_RANGE).sum(axis=1) / AO_SAMPLES
    return shadow.reshape(TEXTURE_SIZE, TEXTURE_SIZE), open_sky.reshape(TEXTURE_SIZE, TEXTURE_SIZE)


def _segment_near_point(x, z, end, centre, radius) -> np.ndarray:
    """Whether the segment from floor point (x, 0, z) to ``end`` passes within ``radius`` of ``centre``."""
    dx, dy, dz = end[0] - x, end[1], end[2] - z
    wx, wy, wz = centre[0] - x, centre[1], centre[2] - z
    s = np.clip((wx * dx + wy * dy + wz * dz) / (dx * dx + dy * dy + dz * dz), 0.0, 1.0)
    ex, ey, ez = wx - s * dx, wy - s * dy, wz - s * dz
    return ex * ex + ey * ey + ez * ez <= radius * radius


def _bilinear(texture: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``texture`` [z, x] over the floor square, sampled at (x, z), clamped at its border."""
    n = texture.shape[0]
    fx = np.clip((x + TEXTURE_HALF_WIDTH) * ((n - 1) / (2 * TEXTURE_HALF_WIDTH)), 0, n - 1)
    fz = np.clip((z + TEXTURE_HALF_WIDTH) * ((n - 1) / (2 * TEXTURE_HALF_WIDTH)), 0, n - 1)
    ix, iz = np.minimum(fx.astype(np.int64), n - 2), np.minimum(fz.astype(np.int64), n - 2)
    wx, wz = fx - ix, fz - iz
    top = texture[iz, ix] * (1 - wx) + texture[iz, ix + 1] * wx
    bottom = texture[iz + 1, ix] * (1 - wx) + texture[iz + 1, ix + 1] * wx
    return top * (1 - wz) + bottom * wz


class RoomView(NamedTuple):
    """The room as one camera sees it, before the object goes in.

    ``weights`` (n_rays, 3) is each subpixel's coverage x shading of floor, wall and object
    (the object column still zero). Floor subpixels near the object (``near``) keep their
    ambient and direct light apart, so the object's occlusion and shadow can scale each.
    """

    rays: Rays
    weights: np.ndarray
    near: np.ndarray
    ambient: np.ndarray
    direct: np.ndarray
    near_x: np.ndarray
    near_z: np.ndarray
    candidates: np.ndarray  # rays that pass through the box holding every object


def view_room(orientation: float) -> RoomView:
    """Cast the camera's rays at the floor (y = 0) and the walls (x = ROOM, z = ROOM)."""
    rays = camera_rays(orientation)
    with np.errstate(divide="ignore"):
        t_floor = np.where(rays.dy < 0, -rays.oy / rays.dy, np.inf)
        t_wall_x = np.where(rays.dx > 0, (ROOM - rays.ox) / rays.dx, np.inf)
        t_wall_z = np.where(rays.dz > 0, (ROOM - rays.oz) / rays.dz, np.inf)
    t = np.minimum(np.minimum(t_floor, t_wall_x), t_wall_z)
    t = np.where(np.isfinite(t), t, 0.0)  # why: never happens with this camera; keeps the maths finite
    px, py, pz = rays.ox + t * rays.dx, rays.oy + t * rays.dy, rays.oz + t * rays.dz
    on_floor = t_floor <= np.minimum(t_wall_x, t_wall_z)
    on_wall_x = ~on_floor & (t_wall_x <= t_wall_z)

    zero = np.zeros_like(px)
    nx, nz = np.where(on_wall_x, -1.0, 0.0), np.where(on_floor | on_wall_x, 0.0, -1.0)
    direct = DIFFUSE * _diffuse(px, py, pz, nx, np.where(on_floor, 1.0, 0.0), nz)
    edges = np.where(on_floor, _edge_darkening(np.minimum(ROOM - px, ROOM - pz)),
                     _edge_darkening(py) * _edge_darkening(np.where(on_wall_x, ROOM - pz, ROOM - px)))
    ambient, direct = AMBIENT * edges, direct * edges
    shade = np.minimum(ambient + direct, 1.0)
    weights = np.stack([np.where(on_floor, shade, zero), np.where(on_floor, zero, shade), zero], axis=1)

    near = np.flatnonzero(on_floor & (np.abs(px) < TEXTURE_HALF_WIDTH) & (np.abs(pz) < TEXTURE_HALF_WIDTH))
    half, height = OBJECT_BOUNDS
    candidates = np.flatnonzero(np.isfinite(_hit_box(rays, half, height).t))
    return RoomView(rays, weights, near, ambient[near], direct[near], px[near], pz[near], candidates)


def geometry_map(room: RoomView, textures: tuple[np.ndarray, np.ndarray], shape: int, scale: float) -> np.ndarray:
    """Coverage x shading of floor, wall and object, (64, 64, 3) float64 in [0, 1].

    Each pixel is the mean of its SUPERSAMPLE x SUPERSAMPLE subpixels, summed in a fixed
    order so that the result is the same on every machine.
    """
    weights = room.weights.copy()
    shadow, open_sky = (_bilinear(tex, room.near_x, room.near_z) for tex in textures)
    weights[room.near, 0] = np.minimum(room.ambient * open_sky + room.direct * shadow, 1.0)

    rays = room.rays.take(room.candidates)
    hit = hit_object(rays, shape, scale)
    seen = np.isfinite(hit.t)
    t = hit.t[seen]
    px, py, pz = (o + t * d[seen] for o, d in zip(rays[:3], rays[3:]))
    contact = _edge_darkening(py, depth=0.3, width=0.35)  # why: the object darkens where it meets the floor
    shade = AMBIENT * contact + DIFFUSE * _diffuse(px, py, pz, hit.nx[seen], hit.ny[seen], hit.nz[seen])
    index = room.candidates[seen]
    weights[index] = 0.0
    weights[index, 2] = np.minimum(shade, 1.0)

    n, k = RESOLUTION, SUPERSAMPLE
    fine = weights.reshape(n * k, n * k, 3)
    total = np.zeros((n, n, 3))
    for i in range(k):
        for j in range(k):
            total += fine[i::k, j::k]
    return total / (k * k)


def surface_maps(grid: Sequence[int] = SHAPES3D_GRID) -> np.ndarray:
    """Ray-cast every geometry (scale, shape, orientation) of ``grid`` once.

    Channel s holds 255 x coverage x shading of floor, wall and object, so an image is
    ``sum_s maps[..., s, None] * rgb(hue_s)``, at most 255 per channel. About 3 s for the
    full grid on one CPU core, most of it baking the 32 floor shadows.

    Parameters
    ----------
    grid : six factor sizes, as for ``SyntheticSource``.

    Returns
    -------
    maps : float32 (n_scale, n_shape, n_orientation, 64, 64, 3)
    """
    sizes = check_grid(grid)
    _, _, _, scales, _, orientations = factor_values(sizes)
    textures = {(i, shape): floor_textures(shape, float(scale))
                for i, scale in enumerate(scales) for shape in range(sizes[4])}
    maps = np.empty((*sizes[3:], RESOLUTION, RESOLUTION, 3), np.float32)
    for k, orientation in enumerate(orientations):
        room = view_room(float(orientation))
        for i, scale in enumerate(scales):
            for shape in range(sizes[4]):
                maps[i, shape, k] = 255.0 * geometry_map(room, textures[i, shape], shape, float(scale))
    return maps


# --------------------------------------------------------------------------- images


def compose(maps: np.ndarray, factors: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Paint the hues onto precomputed surface maps.

    Parameters
    ----------
    maps : float32 (n_scale, n_shape, n_orientation, 64, 64, 3), ``surface_maps(grid)``.
    factors : int (n, 6) factor indices on ``grid``.
    grid : the six factor sizes.

    Returns
    -------
    images : uint8 (n, 64, 64, 3)

    Rows are grouped by geometry and each group is three multiply-adds of its map with its
    rows' hue colours; the loop runs over geometries, never over images. Every operand is
    laid out (rows, pixels x channels), so each numpy loop runs over 12,288 contiguous
    floats: a channel axis of 3 innermost would make broadcasting about ten times slower.
    """
    sizes = check_grid(grid)
    factors = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTOR_NAMES))
    if len(factors) and ((factors < 0).any() or (factors >= np.array(sizes)).any()):
        raise ValueError(f"factor indices must lie in [0, size) for the grid {sizes}")
    n, width = len(factors), RESOLUTION * RESOLUTION * 3
    images = np.empty((n, width), np.uint8)
    if n == 0:
        return images.reshape(n, *IMAGE_SHAPE)
    pixels = maps.reshape(-1, RESOLUTION * RESOLUTION, 3)
    tiles = [np.tile(hue_colours(sizes[s]), (1, RESOLUTION * RESOLUTION)) for s in range(3)]  # (n_hue, width)
    geometry = np.ravel_multi_index(tuple(factors[:, 3:].T), sizes[3:])
    order = np.argsort(geometry, kind="stable")
    starts = np.flatnonzero(np.diff(geometry[order], prepend=-1))
    ends = np.append(starts[1:], n)
    largest = int((ends - starts).max())
    acc_buffer, term_buffer = np.empty((largest, width), np.float32), np.empty((largest, width), np.float32)
    for lo, hi in zip(starts, ends):
        rows = order[lo:hi]
        surfaces = np.repeat(pixels[geometry[rows[0]]].T, 3, axis=1)  # (3, width): each value once per channel
        acc, term = acc_buffer[: hi - lo], term_buffer[: hi - lo]
        np.take(tiles[0], factors[rows, 0], axis=0, out=acc, mode="clip")  # why: "clip" skips a buffer copy
        np.multiply(acc, surfaces[0], out=acc)
        for s in (1, 2):
            np.take(tiles[s], factors[rows, s], axis=0, out=term, mode="clip")
            np.multiply(term, surfaces[s], out=term)
            np.add(acc, term, out=acc)
        np.add(acc, 0.5, out=acc)  # why: round to nearest; the maps keep every channel <= 255
        images[rows] = acc
    return images.reshape(n, *IMAGE_SHAPE)


def render(factors: np.ndarray, grid: Sequence[int] = SHAPES3D_GRID) -> np.ndarray:
    """Render factor index vectors on ``grid``: a pure function of its arguments.

    Builds the surface maps on every call (seconds for the full grid); to render many blocks,
    use ``SyntheticSource``, which builds them once.

    Parameters
    ----------
    factors : int (n, 6) factor indices, columns in ``FACTOR_NAMES`` order.
    grid : the six factor sizes.

    Returns
    -------
    images : uint8 (n, 64, 64, 3)
    """
    return compose(surface_maps(grid), factors, grid)


class SyntheticSource(Source):
    """The built-in synthetic dataset: every row of ``grid`` rendered on request.

    Rows are in canonical order (``row = ravel_multi_index(factors, grid)``, orientation
    fastest). The surface maps are built on the first ``read``, so opening is instant.
    """

    def __init__(self, grid: Sequence[int] = SHAPES3D_GRID):
        self.grid = check_grid(grid)
        self.path = None
        self.factor_names, self.factor_sizes = FACTOR_NAMES, self.grid
        self.attribute_names = ()
        self._space = FactorSpace(FACTOR_NAMES, self.grid)
        self.n_rows = self._space.n_rows
        self._maps: np.ndarray | None = None

    def read(self, rows: np.ndarray) -> Block:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows)):
            raise ValueError(f"rows must be a 1-d array of indices in [0, {self.n_rows})")
        if self._maps is None:
            self._maps = surface_maps(self.grid)
        factors = self._space.to_factors(rows).reshape(len(rows), len(FACTOR_NAMES))
        return Block(images=compose(self._maps, factors, self.grid), factors=factors)

    def close(self) -> None:
        """Drop the surface maps (24 MB for the full grid); a later ``read`` rebuilds them."""
        self._maps = None
