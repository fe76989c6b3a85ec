#!/usr/bin/env python3
"""Train the article's Keras CNN image classifier on random data and export it
as a TensorFlow SavedModel that ``pyserving`` (or TF Serving) can serve.

The export layout is the standard TF Serving one::

    <export_dir>/<version>/saved_model.pb
    <export_dir>/<version>/variables/variables.{index,data-*}

with a single signature ``serving_default``:

    inputs:  images       DT_FLOAT  (-1, 224, 224, 3)
    outputs: predictions  DT_FLOAT  (-1, 10)

The version directory is written atomically: the model is exported into a
temporary directory next to the target and then ``os.rename``-d into place,
so a server polling ``<export_dir>`` never sees a half-written version.

Usage::

    python examples/image_classifier/train_and_export.py                 # quick: 64 samples, 1 epoch
    python examples/image_classifier/train_and_export.py --full          # article: 1000 samples, 5 epochs
    python examples/image_classifier/train_and_export.py --version 2     # a second version

The module can also be loaded by path (tests do this) and exposes
:func:`export_model`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

# Keep TensorFlow's C++ logging quiet; must be set before TF is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SHAPE = (224, 224, 3)
NUM_CLASSES = 10
INPUT_KEY = "images"
OUTPUT_KEY = "predictions"
SIGNATURE_KEY = "serving_default"


def build_model():
    """The article's CNN, unchanged (``keras.Input`` instead of ``input_shape=`` for Keras 3)."""
    from tensorflow import keras
    from tensorflow.keras import layers, models

    model = models.Sequential([
        keras.Input(IMAGE_SHAPE),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(NUM_CLASSES, activation="softmax"),
    ])
    model.compile(optimizer="adam",
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def train_model(*, samples: int = 64, epochs: int = 1, seed: int = 0,
                batch_size: int = 32, verbose: int = 1):
    """Build the model and fit it on random images / labels (as in the article)."""
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)  # seeds python, numpy and TF
    rng = np.random.default_rng(seed)
    x_train = rng.random((samples, *IMAGE_SHAPE), dtype=np.float32)
    y_train = rng.integers(0, NUM_CLASSES, size=(samples,))

    model = build_model()
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=verbose)
    return model


def save_for_serving(model, path: str | os.PathLike) -> None:
    """Save ``model`` as a SavedModel with the article's explicit signature.

    The article's ``tf.saved_model.save(model, dir, signatures={"serving_default": fn})`` needs two changes
    with Keras 3:

    * ``serving_function`` needs a concrete input signature (its ``name`` makes the input key ``images``).
    * Keras 3 names every weight plainly ``kernel`` / ``bias``. A SavedModel written by
      ``tf.saved_model.save`` from such a model loads in TF2's ``tf.saved_model.load``, but TF Serving's
      graph-mode loader (and pyserving's) restores only one variable per name and fails with "Could not find
      variable sequential/dense/kernel". Keras's ``ExportArchive`` (what ``model.export`` uses) writes a
      SavedModel that both loaders restore; it stores each weight twice (86 MB instead of 43 MB on disk).
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE_KEY,
        fn=lambda images: {OUTPUT_KEY: model(images, training=False)},
        input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name=INPUT_KEY)],
    )
    archive.write_out(os.fspath(path), verbose=False)


def export_model(export_dir: str, version: int = 1, *, samples: int = 64,
                 epochs: int = 1, seed: int = 0, verbose: int = 1) -> pathlib.Path:
    """Train the model and export it atomically to ``<export_dir>/<version>``.

    An existing ``<export_dir>/<version>`` is replaced. Returns the version
    directory.
    """
    base = pathlib.Path(export_dir)
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(int(version))

    model = train_model(samples=samples, epochs=epochs, seed=seed, verbose=verbose)

    # A dot-prefixed, non-numeric temp dir in the same parent (same filesystem
    # => os.rename is atomic); servers only consider all-digit version names.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=base))
    try:
        staged = tmp / "export"
        save_for_serving(model, staged)
        if target.exists():
            # Move the old version aside first (rename is atomic), then drop it.
            old = tmp / "old"
            os.rename(target, old)
        os.rename(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train the example CNN on random data and export a SavedModel "
                    "to <export_dir>/<version> for serving.")
    p.add_argument("--export_dir", default="models/my_model",
                   help="model base path (default: %(default)s, relative to the cwd)")
    p.add_argument("--version", type=int, default=1,
                   help="numeric version subdirectory (default: %(default)s)")
    p.add_argument("--samples", type=int, default=64,
                   help="number of random training images (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1,
                   help="training epochs (default: %(default)s)")
    p.add_argument("--full", action="store_true",
                   help="train as in the article: 1000 samples x 5 epochs (slow on CPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="re-export even if the version directory already exists")
    args = p.parse_args(argv)
    if args.full:
        args.samples, args.epochs = 1000, 5
    if args.version < 0:
        p.error("--version must be >= 0")
    if args.samples < 1 or args.epochs < 1:
        p.error("--samples and --epochs must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    target = pathlib.Path(args.export_dir) / str(args.version)
    if (target / "saved_model.pb").exists() and not args.force:
        print(f"{target} already exists; nothing to do (use --force to re-export).")
        return 0

    # Keras' animated progress bar is noise when logging to a file/pipe.
    verbose = 1 if sys.stdout.isatty() else 2
    path = export_model(args.export_dir, args.version, samples=args.samples,
                        epochs=args.epochs, seed=args.seed, verbose=verbose)
    print(f"Exported SavedModel to {path.resolve()}")
    print(f"  signature '{SIGNATURE_KEY}': inputs {INPUT_KEY} float32 (-1, 224, 224, 3) "
          f"-> outputs {OUTPUT_KEY} float32 (-1, {NUM_CLASSES})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
