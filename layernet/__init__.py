"""layernet: instance segmentation of dense and overlapping objects via layering.

Reference implementation of Chen, Wu & Merhof, "Instance Segmentation of Dense and Overlapping
Objects via Layering" (BMVC 2022), in TensorFlow 2 / Keras 3.
"""

__version__ = "0.1.0"

PAPER = ("L. Chen, Y. Wu, D. Merhof. Instance Segmentation of Dense and Overlapping Objects "
         "via Layering. British Machine Vision Conference (BMVC) 2022.")
"""The paper this package implements, to cite (model cards, bioimage.io packages)."""
PAPER_URL = "https://arxiv.org/abs/2210.03551"
