"""--labels files: class indices or label names, one per example; anything else refused
with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.data import read_labels
from edgeport.errors import CalibrationDataError

NAMES = ["cat", "dog", "bird"]


def test_indices_and_names_read_as_class_indices(tmp_path):
    np.save(tmp_path / "ints.npy", np.array([2, 0, 1], dtype=np.int32))
    (tmp_path / "names.txt").write_text("dog\n\nbird\ncat\n")
    (tmp_path / "digits.txt").write_text("1\n2\n")
    assert read_labels(tmp_path / "ints.npy", NAMES).tolist() == [2, 0, 1]
    assert read_labels(tmp_path / "names.txt", NAMES).tolist() == [1, 2, 0]
    assert read_labels(tmp_path / "digits.txt", None).tolist() == [1, 2]


@pytest.mark.parametrize("write,phrase", [
    (lambda p: np.save(p / "l.npy", np.array([0, 3])), "class index 3 is outside"),
    (lambda p: np.save(p / "l.npy", np.array([-1, 0])), "class index -1 is outside"),
    (lambda p: np.save(p / "l.npy", np.zeros((2, 2), dtype=np.int64)), "one label per example"),
    (lambda p: np.save(p / "l.npy", np.array([0.5, 1.0])), "float64 labels"),
    (lambda p: np.save(p / "l.npy", np.array([{"a": 1}], dtype=object)), "cannot read labels"),
    (lambda p: (p / "l.npy").write_text("not numpy"), "cannot read labels"),
    (lambda p: (p / "l.npy").write_text(""), "cannot read labels"),
    (lambda p: (p / "l.txt").write_text("cat\nhorse\n"), "horse are not among the model's labels"),
    (lambda p: (p / "l.txt").write_bytes(b"\xff\xfe\x00"), "cannot read labels"),
    (lambda p: (p / "l.txt").write_text("\n\n"), "one label per example"),
    (lambda p: (p / "l.txt").mkdir(), "is not a file"),
    (lambda p: None, "do not exist"),
])
def test_bad_label_files_are_refused_with_the_reason(tmp_path, write, phrase):
    write(tmp_path)
    path = next(iter(tmp_path.iterdir()), tmp_path / "missing.npy")
    with pytest.raises(CalibrationDataError, match=phrase):
        read_labels(path, NAMES)
