"""Regenerates attacks/data/frost/frost1.png … frost5.png: the frost photographs of ``imagecorruptions``
1.1.2 exactly as its ``frost`` sees them for any image no larger than 315 × 527 px.

The reference reads photograph ``idx`` with ``cv2.imread`` (BGR, uint8) and, when the image
fits inside it, resizes it by 1.1 with ``cv2.resize(..., (ceil(w·1.1), ceil(h·1.1)),
interpolation=cv2.INTER_CUBIC)``; this script stores that array, still in BGR order, as a
lossless RGB-mode PNG (Pillow), so ``attacks/corruption.py`` needs neither OpenCV nor the
reference package. Not imported by robustax. Run it once, offline, with OpenCV and the
reference installed (measured with opencv-python-headless 5.1.0.95):

    python tests/make_frost.py [path/to/imagecorruptions/frost]
"""

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

NAMES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # frost6: unused


def rescaled(path: Path) -> np.ndarray:
    """The reference's ``frost_rescaled`` for an image that fits inside the photograph."""
    frost = cv2.imread(str(path))
    scaling_factor = 1 * 1.1
    new_shape = (int(np.ceil(frost.shape[1] * scaling_factor)),
                 int(np.ceil(frost.shape[0] * scaling_factor)))
    return cv2.resize(frost, dsize=new_shape, interpolation=cv2.INTER_CUBIC)


def main() -> None:
    if len(sys.argv) > 1:
        src = Path(sys.argv[1])
    else:
        import imagecorruptions

        src = Path(imagecorruptions.__file__).parent / "frost"
    here = Path(__file__).resolve().parents[1] / "attacks" / "data" / "frost"
    for i, name in enumerate(NAMES, 1):
        arr = rescaled(src / name)
        out = here / f"frost{i}.png"
        Image.fromarray(arr).save(out, optimize=True)  # BGR bytes stored as they are
        assert np.array_equal(np.asarray(Image.open(out)), arr)
        print(out, arr.shape, out.stat().st_size)


if __name__ == "__main__":
    main()
