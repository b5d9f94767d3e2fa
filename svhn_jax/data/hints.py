"""What to suggest to a user who has no SVHN yet: only what works from where they stand.

The project's checkout sits beside a folder `../shared/data` holding a real
8,000-image slice of SVHN; a fresh clone has no such folder. Error messages
therefore offer what works anywhere, and name the slice only when the path
exists relative to the current directory, checked when the message is built.
"""

from __future__ import annotations

from pathlib import Path

EIGHT_K_SLICE = "../shared/data/svhn_test_8k.npz"

__all__ = ["EIGHT_K_SLICE", "offline_options"]


def offline_options() -> str:
    """One sentence listing the `--data` values that need no download.

    The 8k slice is mentioned only if `EIGHT_K_SLICE` is a file relative to
    the current directory.
    """
    text = ("Without a download: --data synthetic (random SVHN-shaped data, for a "
            "smoke run), --data DIR (a folder holding the official train_32x32.mat "
            "and test_32x32.mat), or --data FILE.npz (arrays X uint8 (N, 32, 32, 3) "
            "and y 0..9)")
    if Path(EIGHT_K_SLICE).is_file():
        text += f"; here, the real 8k SVHN slice: --data {EIGHT_K_SLICE}"
    return text + "."
