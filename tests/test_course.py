"""The learner's code runs the course: notebook 5's training path with the learner's own
functions (loaded from the solution notebooks' exercise cells) against the library's path, and
the helper that loads earlier exercises, with and without the library fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import util

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_learner_training_path_matches_the_library():
    """From the same initial weights and batches, the learner's unet_model_3d + soft_dice_loss +
    train_step and the library's model + make_train_step end with the same weights."""
    import keras
    import tensorflow as tf

    from tumorseg.metrics import batch_dice, batch_dice_loss
    from tumorseg.model import unet_model_3d
    from tumorseg.train import make_train_step

    mine = util.learner_functions(
        "unet_model_3d", "soft_dice_loss", folder=NOTEBOOKS, namespace={"__name__": "learner"}
    )
    namespace = {"__name__": "learner", "soft_dice_loss": mine.soft_dice_loss}
    util.load_exercise_cells(NOTEBOOKS / "05_training.ipynb", namespace)
    train_step = namespace["train_step"]

    keras.utils.set_random_seed(0)
    shape = dict(input_shape=(16, 16, 8, 4), depth=3, n_base_filters=4, normalization="batch")
    learner_model = mine.unet_model_3d(**shape)
    library_model = unet_model_3d(**shape)
    assert [w.shape for w in learner_model.get_weights()] == [
        w.shape for w in library_model.get_weights()
    ]
    library_model.set_weights(learner_model.get_weights())
    library_model.compile(
        optimizer=keras.optimizers.SGD(0.5), loss=batch_dice_loss, metrics=[batch_dice]
    )
    library_step = make_train_step(library_model, tf.distribute.get_strategy())
    optimizer = keras.optimizers.SGD(0.5)  # plain gradient descent: the step is the gradient
    rng = np.random.default_rng(0)
    start = [w.copy() for w in learner_model.get_weights()]
    for _ in range(4):
        x = rng.normal(size=(2, 16, 16, 8, 4)).astype(np.float32)
        y = (rng.random((2, 16, 16, 8, 3)) < 0.2).astype(np.float32)
        mine_loss = float(train_step(learner_model, optimizer, x, y))
        library_loss, _ = library_step((tf.constant(x), tf.constant(y)))
        assert mine_loss == pytest.approx(float(library_loss), abs=1e-5)
    moved = max(float(np.max(np.abs(a - s))) for a, s in zip(learner_model.get_weights(), start))
    assert moved > 1e-2
    for a, b in zip(learner_model.get_weights(), library_model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_learner_code_has_its_source_for_autograph():
    """Loaded exercise cells are compiled under a name whose source inspect finds, so AutoGraph
    can convert the learner's loss inside notebook 5's tf.function without a warning."""
    import inspect

    import tensorflow as tf

    namespace = util.load_exercise_cells(NOTEBOOKS / "04_loss_and_metrics.ipynb")
    loss = namespace["soft_dice_loss"]
    assert inspect.getsource(loss).startswith("def soft_dice_loss(")
    assert loss.__code__.co_filename == "<04_loss_and_metrics.ipynb, exercise cell 3>"
    converted = tf.autograph.to_graph(loss)  # raises when AutoGraph cannot read the source
    y = np.ones((1, 2, 2, 2, 3), np.float32)
    assert float(tf.function(converted)(y, y, axis=(0, 1, 2, 3))) == pytest.approx(0.0)


def test_synthetic_dataset_with_a_progress_bar(tmp_path, capsys):
    """The notebooks' data writer: the cases and dataset.json, and a bar that reaches the end."""
    from tumorseg.data import find_cases

    util.make_synthetic_dataset(tmp_path / "data", cases=1, seed=0)
    assert [case.id for case in find_cases(tmp_path / "data")] == ["BRATS_001"]
    assert "synthetic cases: 100%" in capsys.readouterr().err


def _course_copy(tmp_path: Path, broken: dict[str, str] | None = None) -> Path:
    """The solution notebooks in a folder, with the exercise cell ``grade_id`` of some replaced."""
    for path in NOTEBOOKS.glob("0*.ipynb"):
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if broken and grade_id in broken:
                cell["source"] = broken[grade_id]
        (tmp_path / path.name).write_text(json.dumps(notebook))
    return tmp_path


WRONG_STANDARDIZE = (
    "import numpy as np\n\ndef standardize(image):\n    return image - image.mean()\n"
)


def test_an_unsolved_exercise_stops_with_one_line(tmp_path):
    folder = _course_copy(tmp_path, {"standardize": WRONG_STANDARDIZE})
    with pytest.raises(util.NotSolvedYet) as stopped:
        util.learner_functions("get_sub_volume", "standardize", folder=folder)
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith("standardize (02_patch_generation) is not solved yet: standardize:")
    assert "USE_LIBRARY_FALLBACK = True" in message
    assert util.NotSolvedYet(message)._render_traceback_() == [f"\033[91m{message}\033[0m"]


def test_every_unsolved_exercise_is_named_in_the_one_line(tmp_path):
    skeleton = "def get_sub_volume(*args, **kwargs):\n    return None\n"
    folder = _course_copy(tmp_path, {"standardize": WRONG_STANDARDIZE, "get_sub_volume": skeleton})
    with pytest.raises(util.NotSolvedYet) as stopped:
        util.learner_functions("get_sub_volume", "standardize", folder=folder)
    message = str(stopped.value)
    assert message.startswith(
        "get_sub_volume (02_patch_generation) is not solved yet (nor is standardize "
        "(02_patch_generation)): get_sub_volume:"
    )
    assert "\n" not in message and "?." not in message and ".." not in message


def test_the_library_version_only_when_the_learner_opts_in(tmp_path, capsys):
    from tumorseg import patches

    folder = _course_copy(tmp_path, {"standardize": WRONG_STANDARDIZE})
    mine = util.learner_functions(
        "get_sub_volume", "standardize", folder=folder, use_library_fallback=True
    )
    assert mine.standardize is patches.standardize
    assert mine.get_sub_volume.__module__ == "learner"  # the learner's own, it passes
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "using the library's version" in said[0]


def test_a_missing_notebook_is_named(tmp_path):
    with pytest.raises(util.NotSolvedYet, match="02_patch_generation.ipynb is not in"):
        util.learner_functions("standardize", folder=tmp_path)
