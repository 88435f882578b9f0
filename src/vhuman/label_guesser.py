"""The labelling grid's guesses: the gender stage's own CNN, retrained in the background as hand labels come in,
and a line in the generator's W fitted to the same labels.

The grid shows each next face with this guess, so that the person only corrects its mistakes. One small network
(no folds) is trained on every label so far for a fixed number of steps (750 of 32 faces: about 20 s on two CPU
cores, whatever the number of labels); it retrains whenever the labels have grown by a quarter (at least 40 labels)
since the last training. Every face's w is known from the generate stage, and gender is close to linear in it: on
real faces the 64-pixel CNN misses more faces than a ridge line in W fitted to the same labels (docs/pages.md).
Every eighth label is held out from both; the guess is the CNN, the line or their mean, whichever calls most of
those held-out labels right (the mean on a tie).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from vhuman.gender import ClassifierSettings, predict, train_fold
from vhuman.io import latent_codes, load_image_batch
from vhuman.labeling import MajorityGuess
from vhuman.runtime import fused_for_inference

INPUT_SIZE = 64
MIN_LABELS = 40
BATCH = 32
GUESSES = ("CNN", "latent line", "mean")


class LatentLine:
    """p(female) and p(good quality) as ridge lines in W, each ridge chosen by cross-validation (vhuman.ridge); a
    column whose labels are all alike is that constant."""

    def __init__(self, w: np.ndarray, targets: np.ndarray):
        from vhuman.ridge import cross_validated_ridge_line

        self.lines = [
            cross_validated_ridge_line(w, t)[:2] if t.min() != t.max() else (np.zeros(w.shape[1]), float(t[0]))
            for t in targets.T
        ]

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return np.clip(np.stack([w @ coef + bias for coef, bias in self.lines], axis=1), 0.0, 1.0)


class CNNGuess:
    """p(female) and p(good quality) for the next faces from a CNN trained on the labels so far."""

    def __init__(self, images_dir: str | Path, steps: int = 750, seed: int = 0, latents: str | Path | None = None):
        self.images_dir = Path(images_dir)
        self.steps, self.seed = steps, seed
        self.codes = latent_codes(latents) if latents is not None else None
        self.fitted: tuple = (None, None, "CNN")  # model, line, which guess: swapped whole, read by the page
        self.trained_on = 0
        self.tried_on = 0  # labels at the last retrain, failed or not: a failing one waits for more labels too
        self.thread: threading.Thread | None = None
        self.latest: dict[str, dict] = {}
        self.cache: dict[str, torch.Tensor] = {}
        self.error: str | None = None
        self.lock = threading.Lock()

    def _images(self, ids: list[str]) -> torch.Tensor:
        missing = [i for i in ids if i not in self.cache]
        if missing:
            for i, img in zip(missing, load_image_batch(self.images_dir, missing, INPUT_SIZE), strict=True):
                self.cache[i] = img
        return torch.stack([self.cache[i] for i in ids])

    def _due(self, n: int) -> bool:
        return n >= MIN_LABELS and n - self.tried_on >= max(MIN_LABELS, self.tried_on // 4)

    def labels_changed(self, rows: dict[str, dict]) -> None:
        with self.lock:
            self.latest = rows
            genders = {r["gender"] for r in rows.values()}
            if (self.thread and self.thread.is_alive()) or len(genders) < 2 or not self._due(len(rows)):
                return
            self.thread = threading.Thread(target=self._train, args=(rows,), daemon=True)
            self.thread.start()

    def _train(self, rows: dict[str, dict]) -> None:
        ids = sorted(rows)
        self.tried_on = len(ids)
        try:
            images = self._images(ids)
            female = torch.tensor([rows[i]["gender"] == "female" for i in ids], dtype=torch.float32)
            good = torch.tensor([rows[i]["quality"] == "good" for i in ids], dtype=torch.float32)
            val = np.arange(len(ids))[7::8]  # every eighth label picks the best epoch
            train = np.setdiff1d(np.arange(len(ids)), val)
            epochs = max(1, round(self.steps / -(-len(train) // BATCH)))
            settings = ClassifierSettings(
                INPUT_SIZE, 1, epochs, epochs, BATCH, 0.003, 1e-4, 16, self.seed, mirror_at_inference=True
            )
            model, _ = train_fold(images, female, good, torch.ones_like(good), train, val, settings, fold=0)
            model = fused_for_inference(model)
            line, use = None, "CNN"
            if self.codes is not None:
                w, targets = self._codes(ids), torch.stack([female, good], dim=1).numpy()
                held_out = LatentLine(w[train], targets[train])(w[val])
                use = self._best(predict(model, images[val]), held_out, female[val])
                line = LatentLine(w, targets)  # refitted on every label once the choice is made
            self.fitted, self.trained_on, self.error = (model, line, use), len(ids), None
        except Exception as exc:  # a failed retrain keeps the last model; the page shows why
            self.error = f"{type(exc).__name__}: {exc}"
        # Labels that came in while training may call for the next round.
        self.thread = None
        self.labels_changed(self.latest)

    def _codes(self, ids: list[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self.codes]
        if missing:
            raise KeyError(f"{len(missing)} faces (first {missing[0]}) have no w in the latents table")
        return np.stack([self.codes[i] for i in ids])

    @staticmethod
    def _best(cnn: np.ndarray, line: np.ndarray, female: torch.Tensor) -> str:
        """The guess that calls most held-out genders right (later in GUESSES on a tie)."""
        truth = female.numpy() > 0.5
        right = [((p[:, 0] > 0.5) == truth).sum() for p in (cnn, line, (cnn + line) / 2)]
        return GUESSES[max(range(len(GUESSES)), key=lambda k: (right[k], k))]

    def guesses(self, rows: dict[str, dict], image_ids: list[str]) -> list[dict]:
        model, line, use = self.fitted
        if model is None or not image_ids:
            return MajorityGuess().guesses(rows, image_ids)
        p = predict(model, self._images(image_ids)) if use != "latent line" else None
        if line is not None and use != "CNN":
            p_line = line(self._codes(image_ids))
            p = p_line if p is None else (p + p_line) / 2
        return [
            {"image_id": i, "p_female": float(pf), "p_good_quality": float(pg)}
            for i, (pf, pg) in zip(image_ids, p, strict=True)
        ]

    def status(self) -> dict:
        thread = self.thread
        return {
            "name": self._name(),
            "trained_on": self.trained_on,
            "training": bool(thread and thread.is_alive()),
            "error": self.error,
        }

    def _name(self) -> str:
        model, _, use = self.fitted
        if model is None:
            return "most common label so far"
        return {"CNN": "gender CNN", "latent line": "line in W", "mean": "gender CNN and line in W"}[use]

    def wait(self, timeout: float | None = None) -> None:
        """Until the running retrain (if any) has finished (for scripts that stand in for a person)."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)
