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
CAMERA_DISTANCE = 11.0
CAMERA_PITCH = 24.0  # degrees below horizontal: enough floor to read the perspective
CAMERA_TARGET_Y = 1.2
FIELD_OF_VIEW = 46.0  # vertical, degrees
BASE_AZIMUTH = 45.0  # orientation 0 looks straight into the corner
LIGHT = (-6.0, 11.0, -2.0)  # front-left and high, so the shadow falls on the floor, not the walls
LIGHT_RADIUS = 1.6  # area light: a horizontal disk, which softens the shadow's edge
LIGHT_SAMPLES = 40
AO_SAMPLES = 40
AO_RANGE = 1.2  # only occluders this close darken the floor, so ambient occlusion stays local
AMBIENT, DIFFUSE = 0.38, 0.78
TEXTURE_HALF_WIDTH = 5.0  # shadows are baked on the floor square |x|, |z| <= this
TEXTURE_SIZE = 128

_EPS = 1e-9


