"""layernet: instance segmentation of dense and overlapping objects via layering.

Reference implementation of Chen, Wu & Merhof, "Instance Segmentation of Dense and Overlapping
Objects via Layering" (BMVC 2022), in TensorFlow 2 / Keras 3.
"""

__version__ = "0.1.0"
