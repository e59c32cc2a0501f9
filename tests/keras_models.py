"""Keras models for the tests, built and trained in a child process (Keras picks its backend
once per process, at import; the test process must not be tied to it).

    python tests/keras_models.py cnn OUT_DIR      the issue's CIFAR-style CNN, trained for a few
                                                 seconds on scikit-learn's digits upscaled to
                                                 32x32x3; writes cnn.keras and, for held-out
                                                 digits, eval.npz (uint8 NHWC "images"),
                                                 labels.npy and keras_logits.npy, and calib.npz
    python tests/keras_models.py custom OUT_DIR  a model with a custom layer whose code only this
                                                 script has: custom.keras; and open_size.keras,
                                                 float16.keras, bands.keras, wide.keras,
                                                 unbuilt.keras, lambda.keras
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TRAIN, HELD_OUT = 1400, slice(1400, 1797)


def digits_32x32x3():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)          # raw uint8 images, 8x8
    images = np.repeat(np.repeat(pixels, 4, axis=1), 4, axis=2)[..., None].repeat(3, axis=-1)
    return images, digits.target


def cnn(out: Path) -> None:
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    images, labels = digits_32x32x3()
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[:TRAIN] / 255.0, labels[:TRAIN], epochs=3, batch_size=64, verbose=0)
    model.save(out / "cnn.keras")
    held_out = images[HELD_OUT]
    np.savez(out / "eval.npz", images=held_out)
    np.save(out / "labels.npy", labels[HELD_OUT])
    np.save(out / "keras_logits.npy", np.asarray(model.predict(held_out / 255.0, verbose=0)))
    np.savez(out / "calib.npz", images=images[:200])


def custom(out: Path) -> None:
    import keras

    @keras.saving.register_keras_serializable(package="only_here")
    class Doubling(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    model = keras.Sequential([keras.Input((8, 8, 1)), Doubling(), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.save(out / "custom.keras")
    # Any image size: export needs a fixed one (the manifest's pre-processing resizes to it).
    open_size = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    open_size.save(out / "open_size.keras")
    # Image models with inputs off the RGB float32 path: float16 pixels, five spectral bands.
    keras.Sequential([keras.Input((8, 8, 3), dtype="float16"), keras.layers.Flatten(),
                      keras.layers.Dense(3)]).save(out / "float16.keras")
    keras.Sequential([keras.Input((8, 8, 5)), keras.layers.Flatten(), keras.layers.Dense(3)]).save(out / "bands.keras")
    # Wider than any image edgeport pre-processes: a tensor, fed as it is.
    keras.Sequential([keras.Input((2, 2, 1100)), keras.layers.Flatten(), keras.layers.Dense(3)]).save(
        out / "wide.keras")
    # Never built (no Input, never called), and a Lambda, whose code Keras' safe mode will not run.
    keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)]).save(out / "unbuilt.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2),
                      keras.layers.Dense(3)]).save(out / "lambda.keras")


def build(kind: str, out: Path) -> Path:
    """Run this script for ``kind`` in a child process; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, kind, str(out)], check=True, env={**os.environ, "KERAS_BACKEND": "torch"})
    return out


if __name__ == "__main__":
    os.environ["KERAS_BACKEND"] = "torch"
    {"cnn": cnn, "custom": custom}[sys.argv[1]](Path(sys.argv[2]))
