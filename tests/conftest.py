from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def reference_file(*parts: str) -> Path:
    path = REFERENCE.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"reference fixture {path} is not present beside the repository")
    return path
