"""Embedded tasks; nothing is downloaded. Every task is an entry of the ``TASKS`` registry.

* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, shipped inside the package), as 8
  tokens, each a window of 5 rows centred on its row (40 pixels; ``digit_tokens(..., 'row_windows')``).
  ``digits_rows`` (8 row tokens of 8 pixels, the default tokenisation before issue 15) and
  ``digits_rowcol`` (rows, then columns) use the same split; ``'patches'`` gives 16 tokens of 2x2
  pixels. Pixels are scaled to [0, 1]. The train/test split is stratified and fixed by ``split_seed``.
* ``quadrant``: four digits of different classes in a 2x2 grid, as 16 row tokens of 16 pixels; the
  cue names a quadrant and the label is the digit there. Without the cue a model can do no better
  than pick one of the four digits (about 0.25).
* ``search``: visual search. Four digits of different classes sit in four of the nine 8x8 cells of a
  24x24 canvas; the goal (the cue) names a digit class, and the label is the cell (0-8, row-major)
  holding that digit. Tokens are the canvas's 36 patches of 4x4 pixels, row-major over a 6x6 grid,
  so a location is marked only by position.
* ``translate``: sequence to sequence. A string of digits (length 1 to 8, padded with a PAD symbol to 8)
  is to be reversed (``make_translate_task`` also makes copy and sort). Tokens are one-hot symbols
  ``[S, 8, 11]`` (digits 0-9 and PAD); the label is the output string ``[S, 8]``, PAD after its end.
  Training strings have every length; test strings all have length 8. The model reads the label as
  its decoder's input during training (teacher forcing) and decodes greedily at test time.
* ``cue``: a synthetic top-down attention task generated on the fly. Each sequence holds noisy tokens
  that carry one of ``C`` class prototypes; the cue (an index given beside the tokens, through the
  model's cue path) names one token position, and the label is the class of the token there. The
  tokens alone do not tell which one is cued.

A task's data is a ``TokenDataset``; ``context(split, idx)`` gives the keyword arguments a model call
takes besides the tokens (``{'cue': ...}`` for cued tasks), so training and evaluation pass them on
without knowing what they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch

from .errors import DTypeError, SpikingAttnError, check_choice, check_positive_int
from .registry import Registry


@dataclass(frozen=True)
class TokenDataset:
    """Train/test tensors: ``x`` ``[S, N, F]`` float32 in [0, 1], ``y`` ``[S]`` int64, and for cued tasks
    ``cue`` ``[S]`` int64 indices in ``[0, num_cues)``."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    cue_train: Optional[torch.Tensor] = None
    cue_test: Optional[torch.Tensor] = None
    num_cues: int = 0

    @property
    def num_tokens(self) -> int:
        return self.x_train.shape[1]

    @property
    def in_features(self) -> int:
        return self.x_train.shape[2]

    @property
    def sequence_labels(self) -> bool:
        """True if every sample is labelled with a sequence ``[S, L]`` rather than a class ``[S]``."""
        return self.y_train.dim() == 2

    def without_cue(self) -> "TokenDataset":
        """The same data with the cue withheld (for the no-cue baseline of a cued task)."""
        return replace(self, cue_train=None, cue_test=None, num_cues=0)

    def context(self, split: str, idx=None) -> dict:
        """Keyword arguments for the model besides ``x``, for ``split`` ('train' or 'test') rows ``idx``."""
        check_choice(split, "split", ("train", "test"))
        if self.sequence_labels:  # teacher forcing in training; at test time the model decodes on its own
            return {"target": self.y_train if idx is None else self.y_train[idx]} if split == "train" else {}
        cue = self.cue_train if split == "train" else self.cue_test
        if cue is None:
            return {}
        return {"cue": cue if idx is None else cue[idx]}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to load it and how to train on it by default.

    ``model_defaults`` are ``ModelConfig`` fields used when the user does not set them (the quadrant
    task defaults to SSA, whose token-selective attention it needs).
    """

    name: str
    summary: str
    load: Callable[[], TokenDataset]
    epochs: int
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None
    model_defaults: dict = field(default_factory=dict)


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry (``--task`` choices, ``train(task=...)``)."""
    if not isinstance(spec, TaskSpec):
        raise DTypeError(f"register_task takes a TaskSpec, got {type(spec).__name__}")
    return TASKS.register(spec.name, spec, replace=replace)


DIGIT_TOKENS = ("rows", "patches", "rows+columns", "row_windows")
ROW_WINDOW = 5  # rows per token of the "row_windows" tokenisation (the digits task's default)


def digit_tokens(images: torch.Tensor, tokens: str) -> torch.Tensor:
    """``[S, 8, 8]`` images as token sequences:

    * ``rows``: ``[S, 8, 8]``, one token per row;
    * ``patches``: ``[S, 16, 4]``, one per 2x2 patch;
    * ``rows+columns``: ``[S, 16, 8]``, the 8 rows, then the 8 columns;
    * ``row_windows``: ``[S, 8, 40]``, token ``i`` holds the ``ROW_WINDOW`` rows ``i-2 .. i+2`` side by side
      (zero rows past the edges), so every token sees its row's neighbourhood, as a 5x8 convolution stem
      would; its own row is the middle 8 values.
    """
    check_choice(tokens, "tokens", DIGIT_TOKENS)
    if tokens == "rows":
        return images
    if tokens == "patches":
        return _patches(images)
    if tokens == "row_windows":
        half = ROW_WINDOW // 2
        padded = torch.nn.functional.pad(images, (0, 0, half, half))  # [S, 8 + 2*half, 8]
        return torch.cat([padded[:, i:i + images.shape[1]] for i in range(ROW_WINDOW)], dim=-1)  # [S, 8, 40]
    return torch.cat([images, images.transpose(1, 2)], dim=1)


def _window_rows(tokens: torch.Tensor) -> torch.Tensor:
    """The images ``[S, 8, 8]`` back from ``row_windows`` tokens ``[S, 8, 40]`` (each token's middle row)."""
    half = ROW_WINDOW // 2
    return tokens[..., half * 8:(half + 1) * 8]


def load_digits_tokens(tokens: str = "rows", test_fraction: float = 0.2, split_seed: int = 0,
                       name: Optional[str] = None) -> TokenDataset:
    """scikit-learn digits as token sequences (``digit_tokens``), on the fixed stratified split. ``name``
    defaults to the task registered with these tokens (``digits`` for row windows, ``digits_rows`` for rows)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_choice(tokens, "tokens", DIGIT_TOKENS)
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)  # [S, 8, 8] in [0, 1]
    x = digit_tokens(images, tokens)
    idx_train, idx_test = train_test_split(
        np.arange(len(x)), test_size=test_fraction, random_state=split_seed, stratify=bunch.target
    )
    y = torch.from_numpy(bunch.target.astype(np.int64))
    if name is None:
        name = {"row_windows": "digits", "rows": "digits_rows", "rows+columns": "digits_rowcol"}.get(
            tokens, "digits_" + tokens)
    return TokenDataset(name, x[idx_train], y[idx_train], x[idx_test], y[idx_test], 10)


def make_cue_task(
    num_train: int = 2000, num_test: int = 500, num_tokens: int = 12, num_classes: int = 4,
    features: int = 11, noise: float = 0.15, seed: int = 0,
) -> TokenDataset:
    """Synthetic cued-recall sequences (see module docstring). Seeded and generated in memory."""
    for name, value in (("num_train", num_train), ("num_test", num_test), ("num_tokens", num_tokens),
                        ("num_classes", num_classes), ("features", features)):
        check_positive_int(value, name)
    if features < num_classes + 1:
        raise SpikingAttnError(f"features ({features}) must be at least num_classes + 1 ({num_classes + 1})")
    gen = torch.Generator().manual_seed(seed)
    protos = (torch.rand(num_classes, features, generator=gen) > 0.5).float()  # [C, F]

    def sample(count: int):
        classes = torch.randint(num_classes, (count, num_tokens), generator=gen)  # [S, N]
        x = protos[classes] * (1 - 2 * noise) + noise * torch.rand(count, num_tokens, features, generator=gen)
        cue = torch.randint(num_tokens, (count,), generator=gen)  # [S]: the cued position
        y = classes[torch.arange(count), cue]
        return x.clamp(0, 1), y, cue  # [S, N, F], [S], [S]

    x_train, y_train, cue_train = sample(num_train)
    x_test, y_test, cue_test = sample(num_test)
    return TokenDataset("cue", x_train, y_train, x_test, y_test, num_classes, cue_train, cue_test, num_tokens)


def _distinct_class_digits(images: torch.Tensor, labels: torch.Tensor, count: int, k: int,
                           gen: torch.Generator) -> tuple:
    """For each of ``count`` composites, ``k`` distinct digit classes and one image of each, drawn from
    ``images`` ``[S, 8, 8]`` with ``labels`` ``[S]``: ``(classes [count, k], images [count, k, 8, 8])``."""
    order = torch.argsort(labels, stable=True)  # sample indices grouped by class
    counts = torch.bincount(labels, minlength=10)  # [10]
    starts = torch.cumsum(counts, 0) - counts  # [10]
    classes = torch.rand(count, 10, generator=gen).argsort(dim=1)[:, :k]  # [count, k]: distinct classes
    within = (torch.rand(count, k, generator=gen) * counts[classes]).long()  # [count, k]: one sample of each
    picks = order[starts[classes] + within.minimum(counts[classes] - 1)]  # [count, k]
    return classes, images[picks]


def make_quadrant_task(num_train: int = 10000, num_test: int = 1000, seed: int = 0) -> TokenDataset:
    """Four digits of different classes in a 2x2 grid (a 16x16 image); the cue names a quadrant (0 top
    left, 1 top right, 2 bottom left, 3 bottom right) and the label is the digit there.

    Tokens are the image's 16 rows of 16 pixels, so a quadrant is marked only by position: the top
    or bottom half of the tokens, the left or right half of the features. Training composites use
    the digits' training split and test composites their test split. Seeded, generated in memory.
    """
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        check_positive_int(value, name)
    digits = load_digits_tokens()
    gen = torch.Generator().manual_seed(seed)

    def compose(images: torch.Tensor, labels: torch.Tensor, count: int):
        classes, quads = _distinct_class_digits(images, labels, count, 4, gen)  # [S, 4], [S, 4, 8, 8] in quadrant order
        grid = torch.cat([torch.cat([quads[:, 0], quads[:, 1]], dim=2),
                          torch.cat([quads[:, 2], quads[:, 3]], dim=2)], dim=1)  # [S, 16, 16]
        cue = torch.randint(4, (count,), generator=gen)  # [S]
        return grid.contiguous(), classes[torch.arange(count), cue], cue

    x_train, y_train, cue_train = compose(digits.x_train, digits.y_train, num_train)
    x_test, y_test, cue_test = compose(digits.x_test, digits.y_test, num_test)
    return TokenDataset("quadrant", x_train, y_train, x_test, y_test, 10, cue_train, cue_test, 4)


SEARCH_CELLS = 3  # the canvas is SEARCH_CELLS x SEARCH_CELLS cells of one 8x8 digit each
SEARCH_PATCH = 4  # tokens are SEARCH_PATCH x SEARCH_PATCH pixel patches


def canvas_patches(canvas: torch.Tensor, patch: int = SEARCH_PATCH) -> torch.Tensor:
    """``[S, H, W]`` images -> ``[S, (H/p)(W/p), p*p]`` tokens, one per ``p x p`` patch, row-major."""
    s, h, w = canvas.shape
    return canvas.reshape(s, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(
        s, (h // patch) * (w // patch), patch * patch).contiguous()


def make_search_task(num_train: int = 10000, num_test: int = 1000, digits_per_canvas: int = 4,
                     seed: int = 0) -> TokenDataset:
    """Visual search (module docstring): ``x`` ``[S, 36, 16]`` patch tokens of a 24x24 canvas, ``cue`` the goal
    class ``[S]`` in 0-9, ``y`` the goal's cell ``[S]`` in 0-8. Training canvases use the digits' training
    split and test canvases their test split. Seeded, generated in memory."""
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        check_positive_int(value, name)
    check_positive_int(digits_per_canvas, "digits_per_canvas")
    cells = SEARCH_CELLS * SEARCH_CELLS
    if digits_per_canvas > min(cells, 10):
        raise SpikingAttnError(f"digits_per_canvas must be at most {min(cells, 10)}, got {digits_per_canvas}")
    digits = load_digits_tokens()
    gen = torch.Generator().manual_seed(seed)
    k = digits_per_canvas

    def compose(images: torch.Tensor, labels: torch.Tensor, count: int):
        classes, chosen = _distinct_class_digits(images, labels, count, k, gen)  # [S, k], [S, k, 8, 8]
        where = torch.rand(count, cells, generator=gen).argsort(dim=1)[:, :k]  # [S, k] distinct cells
        canvas = torch.zeros(count, cells, 8, 8)
        canvas[torch.arange(count)[:, None], where] = chosen
        canvas = canvas.reshape(count, SEARCH_CELLS, SEARCH_CELLS, 8, 8).permute(0, 1, 3, 2, 4).reshape(
            count, 8 * SEARCH_CELLS, 8 * SEARCH_CELLS)  # [S, 24, 24]
        target = torch.randint(k, (count,), generator=gen)  # which of the k digits is sought
        rows = torch.arange(count)
        return canvas_patches(canvas), where[rows, target], classes[rows, target]

    x_train, y_train, cue_train = compose(digits.x_train, digits.y_train, num_train)
    x_test, y_test, cue_test = compose(digits.x_test, digits.y_test, num_test)
    return TokenDataset("search", x_train, y_train, x_test, y_test, cells, cue_train, cue_test, 10)


TRANSLATE_KINDS = ("reverse", "copy", "sort")
PAD = 10  # the padding symbol of the translate task (digits are 0-9)


def make_translate_task(kind: str = "reverse", length: int = 8, num_train: int = 10000, num_test: int = 1000,
                        seed: int = 0) -> TokenDataset:
    """Digit strings to ``kind`` ('reverse', 'copy' or 'sort'), as one-hot tokens ``[S, length, 11]``
    (digits and PAD) and output strings ``[S, length]`` (PAD after the end). Training strings have
    lengths 1 to ``length``; test strings all have ``length``. Seeded, generated in memory."""
    check_choice(kind, "kind", TRANSLATE_KINDS)
    for name, value in (("length", length), ("num_train", num_train), ("num_test", num_test)):
        check_positive_int(value, name)
    gen = torch.Generator().manual_seed(seed)

    def sample(count: int, every_length: bool):
        digits = torch.randint(10, (count, length), generator=gen)
        lengths = torch.randint(1, length + 1, (count,), generator=gen) if every_length \
            else torch.full((count,), length)
        pad = torch.arange(length)[None, :] >= lengths[:, None]  # [S, L]
        source = digits.masked_fill(pad, PAD)
        if kind == "copy":
            target = source.clone()
        elif kind == "sort":
            target = source.sort(dim=1).values  # PAD (10) sorts last
        else:  # reverse the first `length` symbols, PAD stays at the end
            index = (lengths[:, None] - 1 - torch.arange(length)[None, :]).clamp_min(0)
            target = torch.gather(source, 1, index).masked_fill(pad, PAD)
        return one_hot_tokens(source, PAD + 1), target

    x_train, y_train = sample(num_train, every_length=True)
    x_test, y_test = sample(num_test, every_length=False)
    return TokenDataset("translate", x_train, y_train, x_test, y_test, PAD + 1)


def one_hot_tokens(index: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot float32 tokens ``[..., classes]`` of integer symbols."""
    return torch.nn.functional.one_hot(index, classes).float()


def load_task(name: str) -> TokenDataset:
    """Load the registered task called ``name``."""
    return TASKS.get(name).load()


def checkpoint_test_samples(payload: dict, path, samples: int, instead: str) -> tuple:
    """The task a checkpoint was trained on, its data (without the cue if the run withheld it) and the rows
    of its first ``samples`` test samples: ``(task, data, rows)``. ``instead`` names the API call that takes
    inputs directly, for a checkpoint that names no known task."""
    settings = (payload.get("training") or {}).get("settings") or {}
    task = settings.get("task")
    if task not in TASKS:
        raise SpikingAttnError(f"checkpoint {str(path)!r} does not name a known task ({task!r}), so there are no test "
                               f"samples to run on; use {instead} instead")
    data = load_task(task)
    if not settings.get("use_cue", True):
        data = data.without_cue()
    if samples > len(data.x_test):
        raise SpikingAttnError(f"samples ({samples}) is more than the {len(data.x_test)} test samples of task {task!r}")
    return task, data, slice(0, samples)


def _patches(images: torch.Tensor) -> torch.Tensor:
    """``[B, 8, 8]`` images -> ``[B, 16, 4]`` tokens, one per 2x2 patch in row-major patch order."""
    return canvas_patches(images, 2)


def _unpatch(tokens: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_patches``: ``[B, 16, 4]`` -> ``[B, 8, 8]``."""
    return tokens.reshape(-1, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(-1, 8, 8)


def shift_digits(tokens: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Augment digit token sequences by a random translation of up to ``max_shift`` pixels (zero fill)."""
    if tokens.shape[1:] == (16, 8):  # rows+columns: shift the image, then read its rows and columns again
        return digit_tokens(shift_digits(tokens[:, :8], generator, max_shift), "rows+columns")
    if tokens.shape[1:] == (8, 8 * ROW_WINDOW):  # row windows: shift the image, then window it again
        return digit_tokens(shift_digits(_window_rows(tokens), generator, max_shift), "row_windows")
    rows = tokens.shape[1:] == (8, 8)
    images = tokens if rows else _unpatch(tokens)  # [B, 8, 8]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)  # [B, 8+2s, 8+2s]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)  # [B, 2]
    row_idx = offsets[:, 0, None] + torch.arange(8)  # [B, 8]
    col_idx = offsets[:, 1, None] + torch.arange(8)  # [B, 8]
    batch = torch.arange(len(images))[:, None, None]
    shifted = padded[batch, row_idx[:, :, None], col_idx[:, None, :]]  # [B, 8, 8]
    return shifted if rows else _patches(shifted)


register_task(TaskSpec("digits", f"scikit-learn's 8x8 digits, 8 tokens, each a window of {ROW_WINDOW} rows centred on "
                       f"its row ({8 * ROW_WINDOW} pixels; 1437 train / 360 test)",
                       lambda: load_digits_tokens("row_windows"), epochs=30, augment=shift_digits))
register_task(TaskSpec("digits_rows", "scikit-learn's 8x8 digits, 8 row tokens of 8 pixels (the same split; the "
                       "default tokenisation before row windows)", load_digits_tokens,
                       epochs=40, augment=shift_digits))
register_task(TaskSpec("digits_rowcol", "scikit-learn's 8x8 digits, 8 row tokens then 8 column tokens of 8 pixels "
                       "(the same split)", lambda: load_digits_tokens("rows+columns"), epochs=40,
                       augment=shift_digits))
register_task(TaskSpec("cue", "synthetic: recall the class of the token whose position the cue names",
                       make_cue_task, epochs=30))
register_task(TaskSpec("search", "visual search: the cue names a digit class; the label is the cell (of 9) holding it",
                       make_search_task, epochs=20))
register_task(TaskSpec("translate", "sequence to sequence: reverse a digit string (length 1-8 in training, 8 in "
                       "the test)", make_translate_task, epochs=30,
                       model_defaults={"mechanism": "seq2seq", "attention": "ssa"}))
register_task(TaskSpec("quadrant", "four digits in a 2x2 grid as 16 row tokens; the cue names the quadrant to read",
                       make_quadrant_task, epochs=20, model_defaults={"attention": "ssa"}))
