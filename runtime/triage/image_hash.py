"""The near-duplicate key of an image: a 64-bit perceptual hash (pHash), compared by Hamming distance.

pHash (`imagehash.phash`: grey, resize to 32x32, 2-D DCT, the 8x8 lowest frequencies against their median)
was chosen over dHash, aHash and wHash by measuring the four photos of ../shared/data/photos:

* a resize to 1200 px long side re-encoded as JPEG quality 60, a JPEG q=60 re-encode, a half-size copy: 0 bits;
* a crop cutting 5% of each side's length, then JPEG q=60: centred 4/8/10/12 bits (chelsea/astronaut/coffee/
  rocket), keeping the top-left corner 6 to 12 bits; other placements of the same crop up to 14 bits, so a 5%
  crop is about the limit of what is caught: larger crops mostly start groups of their own;
* the 4 distinct photos, pairwise: 30 to 36 bits; 20 quarter-crops of them, pairwise: at least 20 bits.

dHash gave up to 13 bits on the same 5% crops but only 8 bits between two distinct quarter-crops, so its gap
is unusable; pHash keeps a gap of 8 bits. Two images are near-duplicates when their distance is at most
`MAX_DISTANCE` = 12. It is not set higher because a false match is the worse error for a responder: it hides a
different post behind another's group in the review queue. For unrelated images whose bits behave like coin
flips a pair lands within 12 bits with probability 2.3e-7 (at 14 bits: 3.5e-6), so 100k distinct images
give about 1,100 false pairs (measured: 1,110 on 100k random hashes); real photographs are not coin flips, so
the figure is a guide, not a bound.

Images are decoded with `crisis_tool.runtime.image_decode.load_image` (every hostile-image limit applies), so a
bomb or a corrupt file raises ImageLoadError naming the image, as it does for the encoder.
"""

from __future__ import annotations

import numpy as np
from imagehash import phash
from PIL import Image

from crisis_tool.runtime.image_decode import ImageLimits, ImageSource, load_image

MAX_DISTANCE = 12
HASH_BITS = 64


def image_hash_of(img: Image.Image) -> int:
    """The 64-bit pHash of a decoded RGB image, as an int (bit 63 = the first DCT coefficient's bit).

    The image the encoder already decoded can be hashed here; the "fast" (reduced) JPEG decode gave the same
    hashes as the exact one on the 1200 px copies of the four photos (0 bits apart).
    """
    bits = np.asarray(phash(img, hash_size=8).hash, dtype=bool).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def image_hash(source: ImageSource, limits: ImageLimits | None = None) -> int:
    """The pHash of encoded image bytes or a file path, decoded within `limits` (ImageLoadError otherwise)."""
    return image_hash_of(load_image(source, limits))


def hamming(a: int, b: int) -> int:
    """The number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def is_near_duplicate(a: int, b: int, max_distance: int = MAX_DISTANCE) -> bool:
    """True when two image hashes differ in at most `max_distance` bits."""
    return hamming(a, b) <= max_distance
