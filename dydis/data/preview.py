"""A contact sheet of dataset images, for a quick look at what a stage read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile images (n, h, w, 3) uint8 into one (rows*(h+gap)+gap, ...) image on a white ground."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        top, left = gap + r * (h + gap), gap + q * (w + gap)
        sheet[top: top + h, left: left + w] = image
    return sheet


def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> None:
    Image.fromarray(image_grid(images, columns)).save(path)
