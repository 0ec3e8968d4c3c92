"""Triage for responders: calibrated confidence, the needs-review rule, near-duplicate groups, the review queue.

Pure building blocks (numpy, Pillow, imagehash; no torch), one job per module:

- `calibration`: softmax with a temperature, ECE, NLL, reliability bins;
- `review_threshold`: the needs-review rule and how its threshold is chosen on dev;
- `image_hash`, `text_key`: the near-duplicate keys of a post's image and text;
- `hash_index`, `grouping`: near-duplicate groups in one streaming pass;
- `review_queue`: the least-confident post of each group, least confident first.
"""
