"""The labelling grid's guesses: the gender stage's own CNN, retrained in the background as hand labels come in.

The grid shows each next face with this guess, so that the person only corrects its mistakes. One small network
(no folds) is trained on every label so far for a fixed number of steps (750 of 32 faces: about 20 s on two CPU
cores, whatever the number of labels); it retrains whenever the labels have grown by a quarter (at least 40 labels)
since the last training.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from vhuman.gender import ClassifierSettings, predict, train_fold
from vhuman.io import load_image_batch
from vhuman.labeling import MajorityGuess
from vhuman.runtime import fused_for_inference

INPUT_SIZE = 64
MIN_LABELS = 40
BATCH = 32


class CNNGuess:
    """p(female) and p(good quality) for the next faces from a CNN trained on the labels so far."""

    def __init__(self, images_dir: str | Path, steps: int = 750, seed: int = 0):
        self.images_dir = Path(images_dir)
        self.steps, self.seed = steps, seed
        self.model = None
        self.trained_on = 0
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
        return n >= MIN_LABELS and n - self.trained_on >= max(MIN_LABELS, self.trained_on // 4)

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
        try:
            images = self._images(ids)
            female = torch.tensor([rows[i]["gender"] == "female" for i in ids], dtype=torch.float32)
            good = torch.tensor([rows[i]["quality"] == "good" for i in ids], dtype=torch.float32)
            val = np.arange(len(ids))[7::8]  # every eighth label picks the best epoch
            train = np.setdiff1d(np.arange(len(ids)), val)
            epochs = max(1, round(self.steps / -(-len(train) // BATCH)))
            settings = ClassifierSettings(INPUT_SIZE, 1, epochs, epochs, BATCH, 0.003, 1e-4, 16, self.seed)
            model, _ = train_fold(images, female, good, torch.ones_like(good), train, val, settings, fold=0)
            self.model, self.trained_on, self.error = fused_for_inference(model), len(ids), None
        except Exception as exc:  # a failed retrain keeps the last model; the page shows why
            self.error = f"{type(exc).__name__}: {exc}"
        # Labels that came in while training may call for the next round.
        self.thread = None
        self.labels_changed(self.latest)

    def guesses(self, rows: dict[str, dict], image_ids: list[str]) -> list[dict]:
        model = self.model
        if model is None or not image_ids:
            return MajorityGuess().guesses(rows, image_ids)
        p = predict(model, self._images(image_ids))
        return [
            {"image_id": i, "p_female": float(pf), "p_good_quality": float(pg)}
            for i, (pf, pg) in zip(image_ids, p, strict=True)
        ]

    def status(self) -> dict:
        thread = self.thread
        return {
            "name": "gender CNN" if self.model is not None else "most common label so far",
            "trained_on": self.trained_on,
            "training": bool(thread and thread.is_alive()),
            "error": self.error,
        }

    def wait(self, timeout: float | None = None) -> None:
        """Until the running retrain (if any) has finished (for scripts that stand in for a person)."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)
