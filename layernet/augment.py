"""Training augmentation in pure TensorFlow graph ops, reproducible from a stateless seed.

One call of :func:`augment` draws, from the given seed,

* a left-right and an up-down flip (each with probability 1/2, if ``config.flip``);
* a rotation by an angle uniform in [0, 360) degrees about the image centre (if
  ``config.rotate``; always drawn, the corners that leave the frame become background);
* a gamma change (probability ``config.gamma_probability``): gamma log-uniform in
  ``[config.gamma_low, config.gamma_high]``, applied per channel to the image rescaled to [0, 1]
  by that channel's min/max and mapped back to the original range;
* an elastic deformation (probability ``config.elastic_probability``): Gaussian-smoothed normal
  noise (sigma ``config.elastic_smoothness`` px), rescaled so that the mean displacement length is
  ``config.elastic_strength`` px; ``out(p) = in(p - d(p))``.
* a zoom (probability ``config.zoom_probability``, not in the paper): a magnification about
  the image centre by a factor log-uniform in ``[1 / config.zoom_range, config.zoom_range]``
  (above 1 objects get larger; below 1 smaller, and what comes from outside the input is
  background).

The geometric draws (flips, rotation, elastic field) are composed into **one** field of source
coordinates, and both the image and the label stack are resampled once through that field: the
image bilinearly, the label stack by nearest neighbour, so labels stay exact integer ids, each
id stays in its slice, and image and labels stay aligned. Pixels whose source lies outside the
input are filled with 0 in both (background in the labels; the percentile-normalised image is
about 0 on background), so the image never shows content that the labels do not describe.
Because all geometry is one resampling, the image is interpolated only once.

All randomness uses ``tf.random.stateless_*`` ops seeded by a shape-``[2]`` integer tensor, so
equal seeds give identical results in any ``tf.data`` map, in any order, on any number of
parallel calls.
"""

from __future__ import annotations

import math

import tensorflow as tf

from layernet.config import Config

__all__ = [
    "augment",
    "adjust_gamma",
    "center_crop",
    "elastic_field",
    "random_crop",
    "source_coordinates",
    "warp_bilinear",
    "warp_nearest",
]

_GAMMA, _GAMMA_ON, _GEOMETRY = range(3)
_ZOOM_FOLD = 7  # folded into the geometry seed for the zoom's draws


def _sub_seeds(seed: tf.Tensor, count: int) -> tf.Tensor:
    """Split a ``[2]`` seed into ``count`` independent ``[2]`` seeds, shape ``(count, 2)``."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.random.experimental.stateless_split(seed, num=count)


def _coin(probability: float, seed: tf.Tensor) -> tf.Tensor:
    """A boolean scalar that is True with the given probability."""
    return tf.random.stateless_uniform([], seed=seed) < probability


def adjust_gamma(image: tf.Tensor, gamma: tf.Tensor) -> tf.Tensor:
    """Apply ``x -> x**gamma`` to each channel rescaled to [0, 1] by its min/max, then map back.

    Parameters
    ----------
    image : tf.Tensor
        ``(H, W, C)`` float32 image.
    gamma : tf.Tensor
        Positive scalar.

    Returns
    -------
    tf.Tensor
        ``(H, W, C)`` float32; the min and max of each channel are unchanged, constant channels
        are returned as they are.
    """
    low = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    high = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    span = high - low
    safe_span = tf.where(span > 0, span, tf.ones_like(span))
    scaled = tf.clip_by_value((image - low) / safe_span, 0.0, 1.0)
    changed = tf.pow(scaled, gamma) * span + low
    return tf.where(span > 0, changed, image)


def _gaussian_kernel(sigma: float) -> tuple[tf.Tensor, int]:
    """Normalised 1-D Gaussian taps (truncated at 3 sigma) and their radius."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-0.5 * tf.square(x / sigma))
    return taps / tf.reduce_sum(taps), radius


def elastic_field(height: tf.Tensor, width: tf.Tensor, smoothness: float, strength: float,
                  seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw a smooth random displacement field with mean displacement length ``strength``.

    Normal noise is smoothed by a separable Gaussian of standard deviation ``smoothness`` px. For
    speed the noise is drawn on a grid coarser by ``max(1, smoothness // 4)``, smoothed there with
    the correspondingly smaller sigma (no border attenuation: the noise grid has a margin of
    3 sigma that the 'valid' convolution consumes) and resized bilinearly to ``(height, width)``.

    Parameters
    ----------
    height, width : tf.Tensor
        Integer scalars, the field size.
    smoothness : float
        Gaussian sigma in pixels; ``<= 0`` means unsmoothed noise.
    strength : float
        Mean displacement length in pixels after rescaling.
    seed : tf.Tensor
        ``[2]`` integer seed.

    Returns
    -------
    d_rows, d_cols : tf.Tensor
        Two ``(height, width)`` float32 displacement components.
    """
    factor = max(1, int(smoothness // 4))
    coarse_h = height // factor + 2
    coarse_w = width // factor + 2
    if smoothness > 0:
        taps, radius = _gaussian_kernel(smoothness / factor)
    else:
        taps, radius = tf.ones([1], tf.float32), 0
    noise = tf.random.stateless_normal(
        tf.stack([1, coarse_h + 2 * radius, coarse_w + 2 * radius, 2]), seed=seed)
    if radius:
        kernel_rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, 2, 1])
        kernel_cols = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, 2, 1])
        noise = tf.nn.depthwise_conv2d(noise, kernel_rows, [1, 1, 1, 1], "VALID")
        noise = tf.nn.depthwise_conv2d(noise, kernel_cols, [1, 1, 1, 1], "VALID")
    if factor > 1:
        noise = tf.image.resize(noise, tf.stack([coarse_h * factor, coarse_w * factor]),
                                method="bilinear")
    field = noise[0, :height, :width, :]
    length = tf.sqrt(tf.reduce_sum(tf.square(field), axis=-1))
    scale = strength / tf.maximum(tf.reduce_mean(length), 1e-12)
    field = field * scale
    return field[..., 0], field[..., 1]


def source_coordinates(height: tf.Tensor, width: tf.Tensor, config: Config, seed: tf.Tensor
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw one geometric augmentation as a field of source coordinates.

    Output pixel ``(r, c)`` takes its value from input position ``(rows[r, c], cols[r, c])``
    (pixel centres at integer coordinates). The field composes, in the order they act on the
    image: flips, rotation about the centre, zoom about the centre, elastic deformation.

    Parameters
    ----------
    height, width : tf.Tensor
        Integer scalars, the image size (the output has the same size).
    config : Config
        Uses ``flip``, ``rotate``, ``zoom_probability``, ``zoom_range``,
        ``elastic_probability``, ``elastic_smoothness`` and ``elastic_strength``.
    seed : tf.Tensor
        ``[2]`` integer seed.

    Returns
    -------
    rows, cols : tf.Tensor
        Two ``(height, width)`` float32 tensors.
    """
    seeds = _sub_seeds(seed, 5)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    rows = tf.tile(tf.range(h)[:, None], tf.stack([1, width]))
    cols = tf.tile(tf.range(w)[None, :], tf.stack([height, 1]))
    if config.elastic_probability > 0 and config.elastic_strength > 0:
        def displaced():
            d_rows, d_cols = elastic_field(height, width, config.elastic_smoothness,
                                           config.elastic_strength, seeds[0])
            return rows - d_rows, cols - d_cols

        rows, cols = tf.cond(_coin(config.elastic_probability, seeds[1]), displaced,
                             lambda: (rows, cols))
    if config.zoom_probability > 0:
        # seeds of their own, so that the other draws of a seed are those without zoom
        zoom_seeds = _sub_seeds(tf.random.experimental.stateless_fold_in(
            tf.cast(seed, tf.int64), _ZOOM_FOLD), 2)
        log_range = math.log(config.zoom_range)
        factor = tf.exp(tf.random.stateless_uniform([], seed=zoom_seeds[0], minval=-log_range,
                                                    maxval=log_range))
        factor = tf.where(_coin(config.zoom_probability, zoom_seeds[1]), factor, 1.0)
        centre_r, centre_c = (h - 1.0) / 2.0, (w - 1.0) / 2.0
        rows = (rows - centre_r) / factor + centre_r
        cols = (cols - centre_c) / factor + centre_c
    if config.rotate:
        angle = tf.random.stateless_uniform([], seed=seeds[2], maxval=2.0 * math.pi)
        cos, sin = tf.cos(angle), tf.sin(angle)
        centre_r, centre_c = (h - 1.0) / 2.0, (w - 1.0) / 2.0
        y, x = rows - centre_r, cols - centre_c
        rows, cols = cos * y - sin * x + centre_r, sin * y + cos * x + centre_c
    if config.flip:
        rows = tf.where(_coin(0.5, seeds[3]), h - 1.0 - rows, rows)
        cols = tf.where(_coin(0.5, seeds[4]), w - 1.0 - cols, cols)
    return rows, cols


def warp_bilinear(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """Resample ``image`` at fractional source positions, bilinearly, zero outside.

    Parameters
    ----------
    image : tf.Tensor
        ``(H, W, C)`` float tensor.
    rows, cols : tf.Tensor
        ``(H2, W2)`` float32 source coordinates.

    Returns
    -------
    tf.Tensor
        ``(H2, W2, C)`` tensor of the image's dtype.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    flat = tf.reshape(image, tf.stack([height * width, shape[2]]))
    row0 = tf.floor(rows)
    col0 = tf.floor(cols)
    frac_r = (rows - row0)[..., None]
    frac_c = (cols - col0)[..., None]
    row0 = tf.cast(row0, tf.int32)
    col0 = tf.cast(col0, tf.int32)
    result = tf.zeros(tf.concat([tf.shape(rows), shape[2:3]], axis=0), image.dtype)
    for d_row, weight_r in ((0, 1.0 - frac_r), (1, frac_r)):
        for d_col, weight_c in ((0, 1.0 - frac_c), (1, frac_c)):
            r = row0 + d_row
            c = col0 + d_col
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            index = tf.clip_by_value(r, 0, height - 1) * width + tf.clip_by_value(c, 0, width - 1)
            weight = weight_r * weight_c * tf.cast(inside, tf.float32)[..., None]
            result += tf.gather(flat, index) * tf.cast(weight, image.dtype)
    return result


def warp_nearest(labels: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """Resample ``labels`` at the nearest source pixel, zero outside (values are never mixed).

    Parameters
    ----------
    labels : tf.Tensor
        ``(H, W, L)`` tensor of any dtype.
    rows, cols : tf.Tensor
        ``(H2, W2)`` float32 source coordinates.

    Returns
    -------
    tf.Tensor
        ``(H2, W2, L)`` tensor of the same dtype.
    """
    shape = tf.shape(labels)
    height, width = shape[0], shape[1]
    flat = tf.reshape(labels, tf.stack([height * width, shape[2]]))
    r = tf.cast(tf.floor(rows + 0.5), tf.int32)
    c = tf.cast(tf.floor(cols + 0.5), tf.int32)
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    index = tf.clip_by_value(r, 0, height - 1) * width + tf.clip_by_value(c, 0, width - 1)
    values = tf.gather(flat, index)
    return tf.where(inside[..., None], values, tf.zeros_like(values))


def augment(image: tf.Tensor, stack: tf.Tensor, config: Config, seed: tf.Tensor
            ) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly augment an image and its label stack with one shared geometric draw.

    Parameters
    ----------
    image : tf.Tensor
        ``(H, W, C)`` float32 normalised image.
    stack : tf.Tensor
        ``(H, W, L)`` int32 channels-last label stack.
    config : Config
        Augmentation options (see the module docstring).
    seed : tf.Tensor
        ``[2]`` integer seed; equal seeds give equal results.

    Returns
    -------
    image : tf.Tensor
        ``(H, W, C)`` float32, bilinearly resampled (and gamma-changed).
    stack : tf.Tensor
        ``(H, W, L)`` int32, nearest-neighbour resampled: a subset of the input ids, each id in
        its original slice.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    stack = tf.convert_to_tensor(stack, tf.int32)
    seeds = _sub_seeds(seed, 3)
    if config.gamma_probability > 0 and not config.gamma_low == config.gamma_high == 1.0:
        log_gamma = tf.random.stateless_uniform([], seed=seeds[_GAMMA],
                                                minval=math.log(config.gamma_low),
                                                maxval=math.log(config.gamma_high))
        image = tf.cond(_coin(config.gamma_probability, seeds[_GAMMA_ON]),
                        lambda: adjust_gamma(image, tf.exp(log_gamma)), lambda: image)
    if (config.flip or config.rotate or config.zoom_probability > 0
            or (config.elastic_probability > 0 and config.elastic_strength > 0)):
        shape = tf.shape(image)
        rows, cols = source_coordinates(shape[0], shape[1], config, seeds[_GEOMETRY])
        image = warp_bilinear(image, rows, cols)
        stack = warp_nearest(stack, rows, cols)
    return image, stack


def random_crop(image: tf.Tensor, stack: tf.Tensor, size: int, seed: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """Cut the same random ``size x size`` window from an image and its label stack.

    Images smaller than ``size`` are first padded with zeros at the bottom/right.

    Parameters
    ----------
    image : tf.Tensor
        ``(H, W, C)`` tensor.
    stack : tf.Tensor
        ``(H, W, L)`` tensor.
    size : int
        Side of the window.
    seed : tf.Tensor
        ``[2]`` integer seed.

    Returns
    -------
    image, stack : tf.Tensor
        ``(size, size, C)`` and ``(size, size, L)``.
    """
    shape = tf.shape(image)
    pad_h = tf.maximum(size - shape[0], 0)
    pad_w = tf.maximum(size - shape[1], 0)
    paddings = tf.stack([tf.stack([0, pad_h]), tf.stack([0, pad_w]), tf.constant([0, 0])])
    image = tf.pad(image, paddings)
    stack = tf.pad(stack, paddings)
    seeds = _sub_seeds(seed, 2)
    top = tf.random.stateless_uniform([], seed=seeds[0], minval=0,
                                      maxval=shape[0] + pad_h - size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed=seeds[1], minval=0,
                                       maxval=shape[1] + pad_w - size + 1, dtype=tf.int32)
    image = image[top:top + size, left:left + size]
    stack = stack[top:top + size, left:left + size]
    return (tf.ensure_shape(image, [size, size, None]),
            tf.ensure_shape(stack, [size, size, None]))


def center_crop(tensor: tf.Tensor, size: int) -> tf.Tensor:
    """Cut the central ``size x size`` window of an ``(H, W, C)`` tensor with ``H, W >= size``."""
    shape = tf.shape(tensor)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return tf.ensure_shape(tensor[top:top + size, left:left + size], [size, size, None])
