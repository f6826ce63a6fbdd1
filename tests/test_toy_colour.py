"""The key-colour placement measure on images whose answer is known."""
import numpy as np
import pytest

from evaluation.toy_colour import key_colour_inside
from hoi.records import Interaction

COLOURS = {"person": (40, 70, 210), "ball": (225, 30, 30)}
LAYOUT = [Interaction("person", "hold", "ball", (0.0, 0.0, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0))]


def test_colours_inside_outside_and_absent():
    image = np.full((8, 8, 3), 230, dtype=np.uint8)
    image[1:7, 1:3] = COLOURS["person"]          # 12 pixels, all inside the subject box
    image[4:6, 5:7] = COLOURS["ball"]            # 4 pixels inside the object box
    image[0:2, 6:8] = COLOURS["ball"]            # 4 outside it
    assert key_colour_inside(image, LAYOUT, COLOURS) == pytest.approx([1.0, 0.5])
    image[:, :] = 230
    assert key_colour_inside(image, LAYOUT, COLOURS) == []   # drawn nowhere: no number


def test_near_colours_count_and_far_ones_do_not():
    image = np.full((4, 4, 3), 230, dtype=np.uint8)
    image[0, 0] = (60, 80, 190)     # 30 from the person's colour: counted, inside
    image[0, 3] = (120, 70, 210)    # 80 away: not the person's colour
    assert key_colour_inside(image, LAYOUT, COLOURS) == [1.0]
